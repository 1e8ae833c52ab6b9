"""Starting the app: arguments, data directories, the Qt application and the main window."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from PySide6.QtWidgets import QApplication

from desktop.main_window import MainWindow
from desktop.paths import APP_AUTHOR, APP_NAME, data_dirs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ember", description="Chat with local language models.")
    p.add_argument("--data-dir", help="keep all user data (conversations, settings) in this folder")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dirs = data_dirs(args.data_dir).create()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(APP_AUTHOR)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    window = MainWindow(dirs)
    window.show()
    return app.exec()
