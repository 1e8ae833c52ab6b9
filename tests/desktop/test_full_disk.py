"""A full disk while the app writes: a message, a reply, a setting, a preset. Each time the user is told in
words ("The disk is full: ... was not saved"), what was saved before is intact, the window keeps running,
and the same action works once there is room again.

The faults: SQLite's own "database or disk is full" (``PRAGMA max_page_count`` at the database's size:
the next page it needs is refused, exactly as on a full disk), an injected one at the store's connection
when the write must fail at a chosen moment, ``ENOSPC`` from ``fsync`` for presets, and a settings file
QSettings cannot write.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QPushButton

import desktop.presets
import desktop.settings
from desktop.settings import Settings
from tests.desktop.helpers import click, greedy, send_and_wait, type_and_send, wait_idle
from tests.hardening import count

pytestmark = pytest.mark.gui

UNLIMITED_PAGES = 1073741823


def fill_the_disk(window) -> None:
    """From now on the database cannot grow by a single page."""
    pages = window.store.db.execute("PRAGMA page_count").fetchone()[0]
    window.store.db.execute(f"PRAGMA max_page_count={pages}")


def free_the_disk(window) -> None:
    window.store.db.execute(f"PRAGMA max_page_count={UNLIMITED_PAGES}")


def saved(window) -> list[tuple[str, str, str]]:
    """What the database holds for the open conversation, read through a second connection."""
    with sqlite3.connect(window.dirs.database) as db:
        rows = db.execute(
            "SELECT role, content, status FROM messages WHERE conversation_id=? AND active=1 ORDER BY turn",
            (window.cid,),
        ).fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return [tuple(r) for r in rows]


def send_text(qtbot, window, text: str) -> None:
    """Put a long text in the input (typing it key by key would take minutes) and press Enter."""
    window.chat.input.setPlainText(text)
    type_and_send(qtbot, window, "")


def test_a_message_sent_to_a_full_disk_is_given_back_and_sends_once_there_is_room(qtbot, window, dialogs):
    greedy(window, max_tokens=8)
    send_and_wait(qtbot, window, "What is the capital of France?")
    before = saved(window)
    assert [role for role, _, _ in before] == ["user", "assistant"]

    fill_the_disk(window)
    long_message = ("Tell me about Paris. " * 300).strip()  # ~6 KB: the row needs new pages
    send_text(qtbot, window, long_message)
    assert dialogs.titles("warning") == ["Disk full"]
    message = dialogs.texts("warning")[0]
    assert message.startswith("The disk is full: your message was not saved.")
    assert str(window.dirs.data) in message and "unchanged" in message
    assert "The disk is full" in window.statusBar().currentMessage()
    assert window.session.reply is None and window.chat.send.isEnabled()  # no reply was started
    assert window.chat.input.toPlainText() == long_message  # given back, not lost
    assert saved(window) == before  # nothing half-written
    assert len(window.chat.widgets) == 2

    free_the_disk(window)
    type_and_send(qtbot, window, "")  # the same Enter, now with room
    wait_idle(qtbot, window)
    after = saved(window)
    assert after[:2] == before and after[2] == ("user", long_message, "complete")
    assert after[3][0] == "assistant" and after[3][2] == "complete" and after[3][1]
    assert len(dialogs.texts("warning")) == 1
    count("full disk: GUI operations that failed visibly and worked again")


class FullDisk:
    """The store's connection, whose writes fail like a full disk's while ``full`` is set."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.full = db, False

    def execute(self, sql: str, *args):
        if self.full and sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_reply_finished_on_a_full_disk_stays_on_screen_and_is_saved_once_there_is_room(qtbot, window, dialogs):
    greedy(window, max_tokens=12)
    send_and_wait(qtbot, window, "Name a colour.")
    disk = FullDisk(window.store.db)
    window.store.db = disk
    armed = [True]

    def fill_while_streaming(_batch) -> None:  # the disk fills once, while this reply streams
        if armed.pop() if armed else False:
            disk.full = True

    window.worker.tokens.connect(fill_while_streaming)

    send_and_wait(qtbot, window, "What is the capital of France?")
    assert dialogs.titles("warning") == ["Disk full"]
    assert dialogs.texts("warning")[0].startswith("The disk is full: the last reply was not saved.")
    reply = window.chat.widgets[-1].message
    assert reply.role == "assistant" and reply.content.strip() and reply.status == "complete"
    on_disk = saved(window)
    assert on_disk[-2] == ("user", "What is the capital of France?", "complete")
    assert on_disk[-1] == ("assistant", "", "interrupted")  # the row made before the disk filled, as it was

    # Still full: the next message waits for the reply before it, and is given back.
    type_and_send(qtbot, window, "And of Italy?")
    assert window.session.reply is None and window.chat.input.toPlainText() == "And of Italy?"
    assert saved(window) == on_disk

    disk.full = False
    type_and_send(qtbot, window, "")
    wait_idle(qtbot, window)
    final = saved(window)
    assert final[:-3] == on_disk[:-1]
    assert final[-3] == ("assistant", reply.content, "complete")  # the reply kept on screen is now on disk
    assert final[-2] == ("user", "And of Italy?", "complete") and final[-1][2] == "complete"
    count("full disk: GUI operations that failed visibly and worked again")


def test_a_setting_that_cannot_be_written_is_said_and_written_with_the_next_change(qtbot, window, dialogs, monkeypatch):
    path = window.settings.path
    before = path.read_bytes()
    with monkeypatch.context() as fault:
        fault.setattr(window.settings, "_flush", lambda: False)  # the write fails ...
        fault.setattr(desktop.settings, "free_bytes", lambda _folder: 0)  # ... on a disk with no room left
        window.chat.max_tokens.setValue(77)
        assert dialogs.titles("warning") == ["Disk full"]
        assert dialogs.texts("warning")[0].startswith("The disk is full: a change to the settings was not saved.")
        assert path.read_bytes() == before
        assert window.settings.get("chat/max_tokens") == 77  # kept in memory

    window.set_theme("dark")  # the next change writes both
    disk = QSettings(str(path), QSettings.Format.IniFormat)
    assert int(disk.value("chat/max_tokens")) == 77 and disk.value("ui/theme") == "dark"
    send_and_wait(qtbot, window, "Hi")  # the app kept running
    count("full disk: GUI operations that failed visibly and worked again")


def test_settings_detect_a_real_failed_write_and_recover(qtbot, tmp_path):
    """No injection: QSettings cannot replace its file (a folder stands in its way). QSettings keeps its
    first error for good, so recovery needs the fresh object Settings makes."""
    path = tmp_path / "settings.ini"
    errors: list[OSError] = []
    settings = Settings(path)
    settings.on_not_saved = errors.append
    settings.set("chat/max_tokens", 100)
    path.unlink()
    path.mkdir()
    settings.set("chat/max_tokens", 200)
    assert len(errors) == 1 and errors[0].filename == str(path)
    path.rmdir()
    settings.set("ui/theme", "light")
    assert len(errors) == 1
    disk = QSettings(str(path), QSettings.Format.IniFormat)
    assert int(disk.value("chat/max_tokens")) == 200 and disk.value("ui/theme") == "light"


def test_a_preset_saved_to_a_full_disk_is_refused_cleanly_and_saves_once_there_is_room(
    qtbot, window, dialogs, monkeypatch
):
    presets = window.sampling.presets
    folder = presets.user_file.parent
    files_before = sorted(os.listdir(folder))
    names_before = presets.names()
    dialogs.text = ("Mine", True)
    save = next(b for b in window.sampling.findChildren(QPushButton) if b.accessibleName() == "Save sampling preset")

    def no_room(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as fault:
        fault.setattr(desktop.presets, "os", SimpleNamespace(**{**vars(os), "fsync": no_room}))
        click(qtbot, save)
    assert dialogs.titles("warning") == ["Preset not saved"]
    assert dialogs.texts("warning")[0].startswith("The disk is full: the preset “Mine” was not saved.")
    assert presets.names() == names_before and sorted(os.listdir(folder)) == files_before  # no temp file left

    click(qtbot, save)
    assert "Mine" in presets.names() and "Mine" in presets.user_file.read_text(encoding="utf-8")
    count("full disk: GUI operations that failed visibly and worked again")


def test_an_edit_resent_to_a_full_disk_changes_nothing_and_works_once_there_is_room(qtbot, window, dialogs):
    greedy(window, max_tokens=8)
    send_and_wait(qtbot, window, "What is the capital of Spain?")
    before = saved(window)
    disk = FullDisk(window.store.db)
    window.store.db = disk
    disk.full = True
    window.chat.editRequested.emit(0, "What is the capital of Portugal?")  # Edit and resend on the question
    assert dialogs.texts("warning")[0].startswith("The disk is full: your edited message was not saved.")
    assert saved(window) == before and window.session.reply is None
    assert window.chat.input.toPlainText() == "What is the capital of Portugal?"  # the edit is not lost

    disk.full = False
    window.chat.input.clear()
    window.chat.editRequested.emit(0, "What is the capital of Portugal?")
    wait_idle(qtbot, window)
    after = saved(window)
    assert after[0] == ("user", "What is the capital of Portugal?", "complete") and after[1][2] == "complete"
    assert len(after) == 2
    count("full disk: GUI operations that failed visibly and worked again")
