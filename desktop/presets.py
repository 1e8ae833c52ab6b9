"""Named presets: built-in ones shipped in ``resources/presets`` plus the user's, saved atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def resources_dir() -> Path:
    """``resources/`` beside the packages, or inside a PyInstaller bundle."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
    return base / "resources"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Presets:
    """Built-ins are read-only; user presets with the same name shadow them."""

    def __init__(self, builtin_file: Path, user_file: Path) -> None:
        self.user_file = user_file
        self.builtin = json.loads(builtin_file.read_text(encoding="utf-8"))
        self.user: dict[str, Any] = {}
        if user_file.is_file():
            try:
                data = json.loads(user_file.read_text(encoding="utf-8"))
                self.user = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                # A damaged file is kept aside, not overwritten.
                user_file.replace(user_file.with_suffix(".damaged.json"))

    def names(self) -> list[str]:
        return list(self.builtin) + [n for n in self.user if n not in self.builtin]

    def get(self, name: str) -> Any:
        return self.user.get(name, self.builtin.get(name))

    def is_builtin(self, name: str) -> bool:
        return name in self.builtin and name not in self.user

    def save(self, name: str, value: Any) -> None:
        """Add or replace a user preset; on OSError (a full disk) nothing changes, on disk or here."""
        user = {**self.user, name: value}
        write_json_atomic(self.user_file, user)
        self.user = user

    def delete(self, name: str) -> None:
        if name in self.user:
            user = {k: v for k, v in self.user.items() if k != name}
            write_json_atomic(self.user_file, user)
            self.user = user
