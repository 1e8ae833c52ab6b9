"""The user's conversations survive kill -9, damaged files, a full disk, newer schemas and a second
instance. No Qt except the single-instance test."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from desktop import db_safety
from desktop.db_safety import KEEP_BACKUPS, NewerSchemaError, is_healthy, open_store
from desktop.store import SCHEMA_VERSION, Store
from tests.hardening import count

KILL_TRIALS = int(os.environ.get("EMBER_KILL_TRIALS", "200"))


def filled(path, n=3) -> list[int]:
    store = Store(path)
    ids = []
    for i in range(n):
        cid = store.create_conversation(title=f"chat {i}")
        store.add_message(cid, "user", f"question {i}")
        store.add_message(cid, "assistant", f"answer {i}")
        ids.append(cid)
    store.close()
    return ids


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(os.urandom(8192)),
        lambda p: p.write_bytes(p.read_bytes()[:3000]),
        lambda p: p.write_bytes(p.read_bytes()[:100] + b"\xff" * 4000 + p.read_bytes()[4100:]),
    ],
    ids=["zero bytes", "random bytes", "truncated", "scribbled pages"],
)
def test_damaged_database_is_moved_aside_and_the_last_backup_restored(tmp_path, damage):
    db = tmp_path / "conversations.sqlite3"
    filled(db)
    opened = open_store(db)  # a healthy start makes a backup
    opened.store.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"conversations.sqlite3{suffix}").unlink(missing_ok=True)
    damage(db)
    opened = open_store(db)
    assert "damaged" in opened.notice and "restored" in opened.notice
    assert sorted(c.title for c in opened.store.conversations()) == ["chat 0", "chat 1", "chat 2"]
    assert is_healthy(db)
    assert len(list(tmp_path.glob("conversations.damaged-*.sqlite3"))) == 1  # moved aside, never deleted


def test_without_a_backup_a_fresh_database_is_started_and_the_old_one_kept(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    db.write_bytes(b"not a database at all" * 100)
    opened = open_store(db)
    assert "starting afresh" in opened.notice and opened.store.conversations() == []
    (aside,) = tmp_path.glob("conversations.damaged-*.sqlite3")
    assert aside.read_bytes().startswith(b"not a database")


def test_backups_are_bounded(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    filled(db)
    for _ in range(KEEP_BACKUPS + 3):
        open_store(db).store.close()
    backups = list(db_safety.backups_dir(db).glob("*.sqlite3"))
    assert len(backups) == KEEP_BACKUPS and all(is_healthy(b) for b in backups)


def test_newer_schema_is_refused_untouched(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    filled(db)
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    with pytest.raises(NewerSchemaError, match="newer version"):
        open_store(db)
    assert db.read_bytes() == before


def test_one_bad_row_does_not_hide_the_rest(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    ids = filled(db)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE messages SET meta='{broken' WHERE conversation_id=?", (ids[1],))
        c.execute("UPDATE conversations SET settings='[1,2' WHERE id=?", (ids[2],))
    store = open_store(db).store
    assert [m.content for m in store.messages(ids[1])] == ["question 1", "answer 1"]
    assert store.conversation(ids[2]).settings == {}


def test_full_disk_during_a_commit_loses_nothing_and_recovers(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    store = Store(db)
    cid = store.create_conversation(title="kept")
    store.add_message(cid, "user", "before the disk filled")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # the "disk" is now full
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.add_message(cid, "assistant", "x" * 200_000)
    assert [m.content for m in store.messages(cid)] == ["before the disk filled"]
    store.db.execute("PRAGMA max_page_count=1073741823")  # space freed
    store.add_message(cid, "assistant", "after")
    assert [m.content for m in store.messages(cid)] == ["before the disk filled", "after"]
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


WRITER = textwrap.dedent(
    """
    import os, sys
    from desktop.store import Store
    store = Store(sys.argv[1])
    log = open(sys.argv[2], "a")
    n = 0
    while True:
        cid = store.create_conversation(title=f"t{n}")
        mid = store.add_message(cid, "user", f"user {n}")
        log.write(f"{cid} {mid} user {n}\\n"); log.flush(); os.fsync(log.fileno())
        aid = store.add_message(cid, "assistant", "", status="interrupted")
        for part in range(3):
            store.update_message(aid, content=f"partial {n} {part}")
        store.update_message(aid, content=f"answer {n}", status="complete")
        log.write(f"{cid} {aid} assistant {n}\\n"); log.flush(); os.fsync(log.fileno())
        if n % 5 == 4:  # logged first: a kill between the delete's commit and the log is no loss
            log.write(f"{cid} {aid} deleted {n}\\n"); log.flush(); os.fsync(log.fileno())
            store.delete_turn(cid, 1)
        n += 1
    """
)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_committed_message(tmp_path):
    db, log = tmp_path / "c.sqlite3", tmp_path / "committed.log"
    rng = random.Random(20261128)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    failures = 0
    for _ in range(KILL_TRIALS):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(log)], env=env)
        time.sleep(rng.uniform(0.05, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        store = Store(db)
        ok = store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        committed: dict[int, str] = {}
        for line in log.read_text().splitlines():
            _cid, mid, kind, n = line.split()
            if kind == "deleted":
                committed.pop(int(mid), None)
            else:
                committed[int(mid)] = f"{kind} {n}" if kind == "user" else f"answer {n}"
        rows = {r[0]: (r[1], r[2]) for r in store.db.execute("SELECT id, content, status FROM messages")}
        for mid, content in committed.items():
            ok &= mid in rows and rows[mid][0] == content
        # A reply that was being written is either absent or marked partial.
        ok &= all(status in ("complete", "interrupted") for _, status in rows.values())
        ok &= all(status == "interrupted" or not c.startswith("partial") for c, status in rows.values())
        store.close()
        failures += not ok
    count("storage: kill -9 trials", KILL_TRIALS)
    count("storage: kill -9 trials that lost data or corrupted the database", failures)
    assert failures == 0


@pytest.mark.gui
def test_a_second_instance_on_the_same_data_folder_is_refused(qtbot, tmp_path, dialogs):
    from PySide6.QtCore import QLockFile

    from desktop import app
    from desktop.paths import data_dirs

    dirs = data_dirs(tmp_path).create()
    first = QLockFile(str(dirs.data / "ember.lock"))
    assert first.tryLock(100)
    assert app.main(["--data-dir", str(tmp_path)]) == 1
    assert any("already running" in text for _kind, _title, text in dialogs.shown)
    first.unlock()
