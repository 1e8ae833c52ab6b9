"""Preferences and window state in an INI file (QSettings), behind a small typed wrapper.

The defaults live in one Qt-free table; a schema version lets later releases migrate. Each change is
written at once, so a write that fails (a full disk) is seen where it happens, not lost at exit.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOW_SPACE_BYTES = 1 << 20  # a failed write with less free space than this is put down to a full disk

DEFAULTS: dict[str, Any] = {
    "ui/theme": "system",  # system | light | dark
    "ui/font_size": 11,
    "ui/folded_panels": [],  # panels hidden because the window was too narrow: they come back when it widens
    "model/path": "",  # "" = the default model
    "model/device": "auto",
    "model/dtype": "auto",
    "model/context": 0,  # tokens; 0: the longest that fits, up to 8,192 (desktop.panels.model)
    "model/compile": True,  # compiled decoding, built in the background on load (engine.compiled.library)
    "model/recent": [],
    "model/library_folders": [],  # folders added to Your models (besides the apps' own, found by themselves)
    "remote/recent": "",  # JSON [[base_url, model_id], …]; API keys live in engine.remote.KeyStore, never here
    "server/port": 8080,  # serving the local model to other apps, on 127.0.0.1
    "chat/context_policy": "drop_oldest",  # drop_oldest | stop
    "chat/max_tokens": 512,
    "chat/think": True,  # a reasoning model thinks before it answers (templates that take enable_thinking)
    "chat/last_conversation": 0,
    "sampling/preset": "Balanced",
}


class Settings:
    """Typed access to the INI file. Every change is written at once; a write that fails (a full disk)
    is reported to ``on_not_saved`` (by default logged), the values stay in memory and go out with the
    next write that works. The file is replaced atomically, so a failed write leaves the old one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.on_not_saved: Callable[[OSError], None] = lambda exc: log.warning("%s", exc)
        self._pending: dict[str, Any] = {}  # changes not yet on disk
        self._failed = False
        self.q = QSettings(str(self.path), QSettings.Format.IniFormat)
        if int(self.q.value("schema", 0)) != SCHEMA_VERSION:
            self._put("schema", SCHEMA_VERSION)

    def get(self, key: str) -> Any:
        default = DEFAULTS[key]
        value = self.q.value(key, default)
        if isinstance(default, list):
            if value in (None, ""):
                return []
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(default, bool):
            return value in (True, "true", "1", 1)
        try:
            return type(default)(value)
        except (TypeError, ValueError):
            return default

    def set(self, key: str, value: Any) -> None:
        if key not in DEFAULTS:
            raise KeyError(key)
        self._put(key, value)

    def geometry(self, key: str) -> QByteArray | None:
        value = self.q.value(f"window/{key}")
        return value if isinstance(value, QByteArray) else None

    def set_geometry(self, key: str, value: QByteArray) -> None:
        self._put(f"window/{key}", value)

    def sync(self) -> None:
        self._write()

    def _put(self, key: str, value: Any) -> None:
        self._pending[key] = value
        self.q.setValue(key, value)
        self._write()

    def _write(self) -> None:
        if self._failed:
            # QSettings keeps the first error for good: a fresh object, so that this write reports its own
            self.q = QSettings(str(self.path), QSettings.Format.IniFormat)
            for key, value in self._pending.items():
                self.q.setValue(key, value)
        self._failed = not self._flush()
        if not self._failed:
            self._pending.clear()
            return
        # QSettings does not say why; a disk with (almost) no room left is the likely reason.
        try:
            full = free_bytes(self.path.parent) < LOW_SPACE_BYTES
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        self.on_not_saved(OSError(code, f"could not write the settings file ({os.strerror(code)})", str(self.path)))

    def _flush(self) -> bool:
        """Write the file (QSettings writes a temporary file and renames it over the old one); False when
        that failed."""
        self.q.sync()
        return self.q.status() == QSettings.Status.NoError


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free
