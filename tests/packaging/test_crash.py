"""Crash handling (desktop/crash.py): each case runs in its own Python, so the hooks it installs never
touch the test runner's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "logs")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exceptions_on_any_thread_are_logged_and_shown_in_a_dialog(tmp_path):
    result = run(
        """
        import sys, threading
        from desktop import crash
        crash.install(sys.argv[1])
        from PySide6.QtCore import QObject, QThread, QTimer, Signal
        from PySide6.QtWidgets import QApplication, QMessageBox

        shown = []
        QMessageBox.exec = lambda box: shown.append((threading.current_thread().name, box.text())) or 0
        app = QApplication([])
        crash.attach_dialog()

        class Worker(QObject):  # like the engine worker: a slot on a QThread
            go = Signal()
            def __init__(self):
                super().__init__()
                self.go.connect(self.work)
            def work(self):
                raise RuntimeError("in the worker thread")

        def in_slot():
            raise ValueError("in a slot")

        thread = QThread()
        worker = Worker()
        worker.moveToThread(thread)
        thread.start()
        QTimer.singleShot(0, in_slot)
        QTimer.singleShot(0, worker.go.emit)
        QTimer.singleShot(0, threading.Thread(target=lambda: 1 / 0, name="plain-thread").start)
        QTimer.singleShot(1500, app.quit)
        app.exec()
        thread.quit()
        thread.wait()
        assert sorted(crash.errors) == sorted(
            ["ValueError: in a slot", "RuntimeError: in the worker thread", "ZeroDivisionError: division by zero"]
        ), crash.errors
        assert len(shown) == 3 and {name for name, _ in shown} == {"MainThread"}, shown
        assert all("crash.log" in text for _, text in shown), shown
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    log = (tmp_path / "logs" / "crash.log").read_text()
    for text in ("ValueError: in a slot", "RuntimeError: in the worker thread", "ZeroDivisionError", "plain-thread"):
        assert text in log
    assert log.count("Traceback (most recent call last)") == 3


def test_an_exception_escaping_startup_is_logged(tmp_path):
    result = run(
        """
        import sys
        from desktop import crash
        crash.install(sys.argv[1])
        raise ImportError("a module the bundle forgot")
        """,
        tmp_path,
    )
    assert result.returncode == 1
    log = (tmp_path / "logs" / "crash.log").read_text()
    assert "ImportError: a module the bundle forgot" in log and "Traceback" in log


def test_a_hard_fault_leaves_every_threads_stack(tmp_path):
    result = run(
        """
        import os, sys
        from desktop import crash
        crash.install(sys.argv[1])
        os.abort()
        """,
        tmp_path,
    )
    assert result.returncode == -signal.SIGABRT
    faults = (tmp_path / "logs" / "faults.log").read_text()
    assert "Fatal Python error: Aborted" in faults and "Current thread" in faults


def test_a_hard_fault_from_the_last_run_is_kept_and_offered_once(tmp_path):
    from desktop import crash

    assert crash.take_previous_fault(tmp_path) is None  # no log yet
    (tmp_path / crash.FAULT_LOG).write_text("Fatal Python error: Segmentation fault\n")
    kept = crash.take_previous_fault(tmp_path)
    assert kept is not None and "Segmentation fault" in kept.read_text()
    assert not (tmp_path / crash.FAULT_LOG).exists()  # this run starts a fresh log
    assert crash.take_previous_fault(tmp_path) is None  # offered once
