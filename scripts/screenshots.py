"""Screenshots of the app, to look at: the main window in light and dark (also 560, 1000 and 1600 px wide),
each panel, and a conversation with a code block.

    .venv/bin/python scripts/screenshots.py [--out out/screenshots]

Runs offscreen (no display needed) in a temporary data directory with the default model, greedy, so the
conversation is the same every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

QUESTIONS = ("What is the capital of France?", "Write a Python function that reverses a string.")
SIZE = (1280, 820)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/screenshots"), help="folder for the PNG files")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication, QTabWidget

    from desktop.main_window import MainWindow
    from desktop.paths import data_dirs

    app = QApplication.instance() or QApplication(sys.argv[:1])

    def settle(until: Callable[[], bool] = lambda: True, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while True:
            app.processEvents()
            # Outside app.exec() nothing else deletes what deleteLater() was asked to.
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
            if until():
                break
            if time.monotonic() > end:
                raise TimeoutError("the app did not get there in time")
            time.sleep(0.01)
        for _ in range(5):  # let layouts and repaints catch up
            app.processEvents()

    args.out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []

    def save(widget, name: str) -> None:
        path = args.out / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        saved.append(path)

    with tempfile.TemporaryDirectory(prefix="ember-screenshots-") as tmp:
        window = MainWindow(data_dirs(tmp).create())
        window.set_theme("light")
        window.resize(*SIZE)
        window.show()
        settle(lambda: window.model_info is not None)
        window.sampling.inputs["temperature"].setValue(0)
        window.chat.max_tokens.setValue(160)
        for question in QUESTIONS:
            window.chat.input.setPlainText(question)
            window.chat.send.click()
            settle(lambda: window.session.reply is None)
        window.chat.input.setPlainText("Thanks! Can you also")
        settle(lambda: window.prompts.preview.toPlainText().rstrip().endswith("assistant"))
        # The inspector on the first reply ("...Paris."), a token of the reply selected, a mid-depth layer.
        window.inspector.inspect_turn(1)
        settle(lambda: not window.inspector.busy and window.inspector_panel.result is not None)
        panel = window.inspector_panel
        panel.select(window.inspector.reply_start + 5)
        panel.layer.setValue(window.worker.model.config.n_layer // 2)
        settle(lambda: panel.lens.rowCount() > 0)
        # "How it works" on a sentence with a pronoun; its attention step shows where "it" looks.
        window.how_it_works.open("The cat chased the mouse because it was")
        settle(lambda: window.how_panel.explanation is not None)
        how = window.how_panel

        for theme in ("light", "dark"):
            window.set_theme(theme)
            settle()
            save(window, f"main-{theme}")
            for width in (560, 1000, 1600):  # panels fold away when narrow and come back at their share
                window.resize(width, SIZE[1])
                settle()
                save(window, f"main-{width}-{theme}")
            window.resize(*SIZE)
            settle()
            save(window.chat, f"conversation-code-{theme}")
            for key, dock in window.docks.items():
                window.dock_layout.open(key)  # from the rail: in place of the panel shown on its side
                settle()
                save(dock, f"panel-{key}-{theme}")
            window.dock_layout.open("inspector")
            for index, view in enumerate(("tokens", "attention", "lens")):
                panel.tabs.setCurrentIndex(index)
                settle()
                save(window.docks["inspector"], f"inspector-{view}-{theme}")
            panel.tabs.setCurrentIndex(1)
            panel.tabs.currentWidget().findChild(QTabWidget).setCurrentIndex(1)  # all layers x heads
            settle()
            save(window.docks["inspector"], f"inspector-grid-{theme}")
            panel.tabs.currentWidget().findChild(QTabWidget).setCurrentIndex(0)
            panel.tabs.setCurrentIndex(0)
            window.dock_layout.open("how_it_works")
            for step, page in enumerate(how.pages):
                how.go_to(step)
                if page.title == "Attention":
                    page.token.setCurrentIndex(len(how.explanation.ids) - 2)  # "it"
                settle()
                save(window.docks["how_it_works"], f"how-{step + 1}-{page.title.lower().replace(' ', '-')}-{theme}")
            how.go_to(0)
            window.dock_layout.open("prompts")
        window.close()
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
