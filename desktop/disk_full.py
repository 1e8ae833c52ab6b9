"""Telling a full disk apart from other write errors, and saying so in words a user can act on.

Qt-free. SQLite reports a full disk (its own ``SQLITE_FULL``, or ``ENOSPC`` from the file system) as
``sqlite3.OperationalError('database or disk is full')``; plain file writes raise ``OSError`` with
``ENOSPC`` (or ``EDQUOT`` past a quota). Every write Ember makes is atomic (a SQLite transaction, or a
temporary file renamed over the old one), so a failed write leaves the previous data as it was.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The errors a write can fail with; callers catch these and ask `is_disk_full`.
WRITE_ERRORS = (sqlite3.OperationalError, OSError)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return "database or disk is full" in str(exc)
    return False


def not_saved_message(what: str, exc: BaseException, where: str | Path) -> str:
    """E.g. "The disk is full: your message was not saved. ..." for ``what`` = "your message"."""
    if is_disk_full(exc):
        return (
            f"The disk is full: {what} was not saved. Everything saved before is unchanged. "
            f"Free some space on the disk that holds {where} and try again."
        )
    return f"{what[:1].upper()}{what[1:]} was not saved: {exc}. Everything saved before is unchanged."
