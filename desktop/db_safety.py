"""Opening the conversations database safely: damaged files are moved aside (never deleted), the newest
good backup is restored, and a bounded number of backups is made at every start.

A database written by a newer Ember is refused untouched (`NewerSchemaError`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from desktop.store import SCHEMA_VERSION, Store

log = logging.getLogger(__name__)
KEEP_BACKUPS = 5


class NewerSchemaError(RuntimeError):
    """The database was written by a newer Ember; it is left as it is."""


@dataclass
class Opened:
    store: Store
    notice: str | None  # what the user should be told (a damaged database moved aside, say)


def backups_dir(database: Path) -> Path:
    return database.parent / "backups"


def is_healthy(path: Path) -> bool:
    """The file opens as SQLite and passes ``PRAGMA quick_check``."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError:
        return False


def _schema_version(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def back_up(database: Path) -> Path:
    """Copy the database with SQLite's online backup API; keep the newest `KEEP_BACKUPS`."""
    folder = backups_dir(database)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{database.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    for old in sorted(folder.glob(f"{database.stem}-*.sqlite3"))[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)
    return target


def _move_aside(database: Path) -> Path:
    aside = database.with_name(f"{database.stem}.damaged-{time.strftime('%Y%m%d-%H%M%S')}{database.suffix}")
    database.replace(aside)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    return aside


def open_store(database: Path) -> Opened:
    """Open (or create) the store at ``database``, repairing what can be repaired, then back it up."""
    notice = None
    if database.exists():
        if database.stat().st_size == 0 or not is_healthy(database):
            aside = _move_aside(database)
            good = [
                b
                for b in sorted(backups_dir(database).glob(f"{database.stem}-*.sqlite3"), reverse=True)
                if is_healthy(b)
            ]
            if good:
                with sqlite3.connect(good[0]) as source, sqlite3.connect(database) as copy:
                    source.backup(copy)
                notice = (
                    f"The conversations database was damaged. It was moved to {aside.name} and the backup "
                    f"from {good[0].stem.split('-', 1)[1]} was restored."
                )
            else:
                notice = f"The conversations database was damaged. It was moved to {aside.name}; starting afresh."
            log.warning(notice)
        elif _schema_version(database) > SCHEMA_VERSION:
            raise NewerSchemaError(
                f"{database} was written by a newer version of Ember. It was left untouched; "
                "please use that version (or move the file away to start afresh)."
            )
    store = Store(database)
    back_up(database)
    return Opened(store, notice)
