"""Preferences and window state in an INI file (QSettings), behind a small typed wrapper.

The defaults live in one Qt-free table; a schema version lets later releases migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

SCHEMA_VERSION = 1

DEFAULTS: dict[str, Any] = {
    "ui/theme": "system",  # system | light | dark
    "ui/font_size": 11,
    "model/path": "",  # "" = the default model
    "model/device": "auto",
    "model/dtype": "auto",
    "model/recent": [],
    "remote/recent": "",  # JSON [[base_url, model_id], …]; API keys live in engine.remote.KeyStore, never here
    "server/port": 8080,  # serving the local model to other apps, on 127.0.0.1
    "chat/context_policy": "drop_oldest",  # drop_oldest | stop
    "chat/max_tokens": 512,
    "chat/last_conversation": 0,
    "sampling/preset": "Balanced",
}


class Settings:
    def __init__(self, path: Path) -> None:
        self.q = QSettings(str(path), QSettings.Format.IniFormat)
        if int(self.q.value("schema", 0)) != SCHEMA_VERSION:
            self.q.setValue("schema", SCHEMA_VERSION)

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
        self.q.setValue(key, value)

    def geometry(self, key: str) -> QByteArray | None:
        value = self.q.value(f"window/{key}")
        return value if isinstance(value, QByteArray) else None

    def set_geometry(self, key: str, value: QByteArray) -> None:
        self.q.setValue(f"window/{key}", value)

    def sync(self) -> None:
        self.q.sync()
