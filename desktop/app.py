"""Starting the app: arguments, data directories, the Qt application and the main window."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from desktop import crash
from desktop.paths import APP_AUTHOR, APP_NAME, data_dirs
from desktop.presets import resources_dir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ember", description="Chat with local language models.")
    p.add_argument("--data-dir", help="keep all user data (conversations, settings) in this folder")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="check this installation offscreen in a temporary folder: load the default model, write a short "
        "reply, inspect it; exit 0 when all works",
    )
    p.add_argument("--screenshot", metavar="PATH", help="with --self-test: save a picture of the window to PATH")
    return p.parse_args(argv)


def offer_fault_log(parent, path) -> None:
    """Ember crashed hard last time: say so, and show the technical details if the user wants them."""
    from PySide6.QtWidgets import QMessageBox

    box = QMessageBox(
        QMessageBox.Icon.Warning,
        APP_NAME,
        "Ember stopped unexpectedly the last time it ran.",
        QMessageBox.StandardButton.Ok,
        parent,
    )
    box.setInformativeText(f"The technical details are kept in {path}.")
    box.setDetailedText(path.read_text(encoding="utf-8", errors="replace")[-20_000:])
    box.exec()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        from desktop import self_test

        return self_test.run(screenshot=args.screenshot)
    if args.screenshot:
        print("ember: --screenshot goes with --self-test", file=sys.stderr)
        return 2
    dirs = data_dirs(args.data_dir).create()
    previous_fault = crash.take_previous_fault(dirs.logs)
    crash.install(dirs.logs)
    from PySide6.QtCore import QLockFile
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication, QMessageBox

    from desktop.launch_window import LaunchWindow
    from desktop.settings import Settings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(APP_AUTHOR)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("ember")  # Wayland and the docks match the window to resources/ember.desktop
    icon = QIcon()
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        icon.addFile(str(resources_dir() / "icons" / f"ember-{size}.png"))
    app.setWindowIcon(icon)
    crash.attach_dialog()
    # One Ember per data folder: a second one would write the same database and settings.
    lock = QLockFile(str(dirs.data / "ember.lock"))
    if not lock.tryLock(200):
        QMessageBox.warning(None, APP_NAME, f"Ember is already running with the data folder {dirs.data}.")
        return 1
    # On screen at once; the main window's modules (torch) load behind it, then the model, in the window.
    launch = LaunchWindow(Settings(dirs.settings_file).geometry("geometry"))
    launch.show_now()
    from desktop.db_safety import NewerSchemaError
    from desktop.main_window import MainWindow

    try:
        window = MainWindow(dirs)
    except NewerSchemaError as e:
        launch.close()
        QMessageBox.critical(None, APP_NAME, str(e))
        return 1
    window.show()
    launch.close()
    if window.store_notice:
        QMessageBox.warning(window, APP_NAME, window.store_notice)
    if previous_fault is not None:
        offer_fault_log(window, previous_fault)
    return app.exec()
