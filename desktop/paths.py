"""Where user data lives: the platform's directories (appdirs), or one folder given by ``--data-dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import appdirs

APP_NAME = "Ember"
APP_AUTHOR = "Ember"


@dataclass(frozen=True)
class DataDirs:
    data: Path  # conversations database, user presets
    config: Path  # window layout and preferences
    cache: Path
    logs: Path

    @property
    def database(self) -> Path:
        return self.data / "conversations.sqlite3"

    @property
    def settings_file(self) -> Path:
        return self.config / "settings.ini"

    @property
    def sampling_presets(self) -> Path:
        return self.data / "sampling_presets.json"

    @property
    def prompt_presets(self) -> Path:
        return self.data / "prompt_presets.json"

    def create(self) -> DataDirs:
        for d in (self.data, self.config, self.cache, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return self


def data_dirs(override: str | Path | None = None) -> DataDirs:
    if override is not None:
        root = Path(override)
        return DataDirs(root / "data", root / "config", root / "cache", root / "logs")
    return DataDirs(
        Path(appdirs.user_data_dir(APP_NAME, APP_AUTHOR)),
        Path(appdirs.user_config_dir(APP_NAME, APP_AUTHOR)),
        Path(appdirs.user_cache_dir(APP_NAME, APP_AUTHOR)),
        Path(appdirs.user_log_dir(APP_NAME, APP_AUTHOR)),
    )
