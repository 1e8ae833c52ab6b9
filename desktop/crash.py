"""Crashes leave a trace: an unhandled exception (on any thread) is written with its traceback to
``crash.log`` in the user's log directory, and a dialog says so; a hard fault (segfault, abort) is dumped
by faulthandler to ``faults.log`` beside it. A packaged app has no console, so without this it would
simply vanish.

`install` needs no Qt and is called first thing; `attach_dialog` is called once the QApplication exists.
Nothing here may raise: the handlers fall back to stderr (when there is one) and then to silence.
"""

from __future__ import annotations

import datetime
import faulthandler
import platform
import sys
import threading
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

CRASH_LOG = "crash.log"
FAULT_LOG = "faults.log"

_state: dict[str, Any] = {
    "log_dir": None,
    "fault_file": None,
    "bridge": None,  # a QObject living on the GUI thread; its signal shows the dialog there
    "interactive": True,  # False: log, but never open a dialog (the self-test, scripted runs)
    "showing": False,
}
errors: list[str] = []  # the summaries of every exception handled here, in order


def log_path() -> Path | None:
    d = _state["log_dir"]
    return d / CRASH_LOG if d is not None else None


def take_previous_fault(log_dir: str | Path) -> Path | None:
    """A hard fault recorded by the last run (faulthandler's log is not empty): moved to a dated file,
    so this run starts a fresh log, and returned so the app can offer to show it. Call before `install`."""
    fault = Path(log_dir) / FAULT_LOG
    try:
        if not fault.is_file() or fault.stat().st_size == 0:
            return None
        kept = fault.with_name(f"faults-{time.strftime('%Y%m%d-%H%M%S')}.log")
        fault.replace(kept)
    except OSError:
        return None
    return kept


def install(log_dir: str | Path, *, interactive: bool = True) -> Path:
    """Route unhandled exceptions and hard faults to files in ``log_dir``; idempotent, and may be called
    again with another folder (``--data-dir``). Returns the crash log's path."""
    log_dir = Path(log_dir)
    _state["interactive"] = interactive
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fault_file = open(log_dir / FAULT_LOG, "a", encoding="utf-8")  # kept open for faulthandler
    except OSError:
        fault_file = None
    else:
        _state["log_dir"] = log_dir
    if fault_file is not None:
        faulthandler.enable(file=fault_file, all_threads=True)
        old, _state["fault_file"] = _state["fault_file"], fault_file
        if old is not None:
            old.close()
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    return log_dir / CRASH_LOG


def set_interactive(interactive: bool) -> None:
    _state["interactive"] = interactive


def attach_dialog() -> None:
    """Call on the GUI thread once a QApplication exists: later exceptions also show a dialog."""
    from PySide6.QtCore import QObject, Signal, Slot

    class Bridge(QObject):
        crashed = Signal(str, str)

        def __init__(self) -> None:
            super().__init__()
            self.crashed.connect(self.show)  # the bridge lives on the GUI thread: queued from any other

        @Slot(str, str)
        def show(self, summary: str, path: str) -> None:
            _show_dialog(summary, path)

    _state["bridge"] = Bridge()


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    handle(kind, value, tb, threading.current_thread().name)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "unknown thread"
    handle(args.exc_type, args.exc_value, args.exc_traceback, name)


def handle(kind: type[BaseException], value: BaseException | None, tb: TracebackType | None, where: str) -> None:
    """Log one exception, echo it to stderr, and show the dialog (on the GUI thread) if there can be one."""
    text = "".join(traceback.format_exception(kind, value, tb))
    summary = f"{kind.__name__}: {value}" if str(value) else kind.__name__
    errors.append(summary)
    path = _write(text, where)
    try:
        if sys.stderr is not None:
            sys.stderr.write(f"Ember: unhandled exception in {where}\n{text}")
            if path is not None:
                sys.stderr.write(f"(written to {path})\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    bridge = _state["bridge"]
    if bridge is not None and _state["interactive"]:
        try:
            bridge.crashed.emit(summary, str(path) if path is not None else "")
        except RuntimeError:  # the bridge's C++ object is gone (the app is shutting down)
            pass


def record(error: BaseException, where: str) -> Path | None:
    """Write a caught exception's traceback to the crash log, without a dialog (the caller tells the user
    in its own way); returns the log's path, or None when there is no log."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return _write(text, where)


def _write(text: str, where: str) -> Path | None:
    path = log_path()
    if path is None:
        return None
    frozen = "packaged" if getattr(sys, "frozen", False) else "from source"
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    header = f"=== {stamp} · Ember ({frozen}) · Python {platform.python_version()} · {platform.platform()} · {where}\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(header + text + "\n")
        return path
    except OSError:
        return None


def _show_dialog(summary: str, path: str) -> None:
    if _state["showing"]:  # one dialog at a time: an error repeating in a paint event must not stack them
        return
    _state["showing"] = True
    try:
        from PySide6.QtWidgets import QApplication, QMessageBox

        if QApplication.instance() is None:
            return
        where = f"The details were written to:\n{path}" if path else "The details could not be written to a log file."
        box = QMessageBox(
            QMessageBox.Icon.Critical,
            "Ember: unexpected error",
            f"Something went wrong inside Ember.\n\n{summary}\n\n{where}\n\n"
            "If Ember misbehaves from now on, restart it. Please include that file when you report the problem.",
        )
        box.exec()
    finally:
        _state["showing"] = False
