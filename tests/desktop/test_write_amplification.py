"""Bytes written per generated token stay constant: a reply's writes touch its own row, never the whole
conversation, however long the conversation already is.

Replies of two lengths (8 and 32 tokens) stream through the real window and store, in a new
conversation and in one holding ~240 KB of earlier messages, after a ~480 KB other conversation has
made the database's B-trees as deep for both. The streaming reply is saved at every token batch here
(the app saves at most every SAVE_PARTIAL_SECONDS; every batch is the most it could ever write), and
the bytes each save adds to the database files are measured: with automatic checkpoints off, the
write-ahead log only grows, so its growth is exactly what was written (the main file is not touched).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

import desktop.chat_session
from tests.desktop.helpers import greedy, type_and_send
from tests.hardening import count, figure

pytestmark = [pytest.mark.gui, pytest.mark.slow]  # two minutes on a busy 2-core machine

APP_SAVE_SECONDS = desktop.chat_session.SAVE_PARTIAL_SECONDS
REPLY_TIMEOUT_MS = 240_000  # a busy shared CPU: slow is not what this test is about
SHORT, LONG = 8, 32  # max tokens of the two replies
EARLIER_TURNS = 120  # the long conversation: 120 earlier messages of ~2 KB (~240 KB)
EARLIER_TEXT = "Some earlier words about the weather and the sea. " * 40
BALLAST_TURNS = 240  # another conversation, written first, so the database's B-trees are as deep for both


class WriteMeter:
    """Wraps the store's writes of a reply and records the bytes each one added to the database files."""

    def __init__(self, store) -> None:
        self.files = [Path(store.path), Path(f"{store.path}-wal")]
        self.saves: list[int] = []  # bytes of each save of the streaming reply
        self.store = store
        real = store.update_message

        def update_message(message_id, **fields):
            before = self.size()
            real(message_id, **fields)
            self.saves.append(self.size() - before)

        store.update_message = update_message

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())


def reply_bytes(qtbot, window, meter: WriteMeter, max_tokens: int, question: str) -> dict:
    greedy(window, max_tokens=max_tokens)
    meter.saves.clear()
    before = meter.size()
    type_and_send(qtbot, window, question)
    qtbot.waitUntil(lambda: window.session.reply is None and window.chat.send.isEnabled(), timeout=REPLY_TIMEOUT_MS)
    total = meter.size() - before  # the question, the reply's row, each save of it
    reply = window.store.messages(window.cid)[-1]
    tokens = reply.meta["generated_tokens"]
    assert reply.status == "complete" and tokens >= min(max_tokens, 24), "the reply ended early: ask for more"
    return {"tokens": tokens, "total": total, "per_token": total / tokens, "saves": list(meter.saves)}


def measure(qtbot, window, earlier_turns: int) -> tuple[dict, dict, int]:
    window.new_conversation()
    for turn in range(earlier_turns):
        window.store.add_message(window.cid, "user" if turn % 2 == 0 else "assistant", f"{turn} {EARLIER_TEXT}")
    window.session.show_messages()
    stored = sum(len(m.content.encode()) for m in window.store.messages(window.cid))
    meter = WriteMeter(window.store)
    short = reply_bytes(qtbot, window, meter, SHORT, "Write a long story about a dragon.")
    long = reply_bytes(qtbot, window, meter, LONG, "Write a long story about a dragon and a knight.")
    return short, long, stored


def test_bytes_written_per_token_do_not_grow_with_the_conversation(qtbot, window, monkeypatch):
    monkeypatch.setattr(desktop.chat_session, "SAVE_PARTIAL_SECONDS", 0.0)  # a save at every token batch
    window.store.db.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows: its growth is the writes
    window.chat.set_policy("drop_oldest")
    # The model reads only the newest ~500 tokens of the long conversation (the rest is stored, not sent):
    # what is measured is the storage, and a full 8K-token prefill would take minutes on a small CPU.
    monkeypatch.setattr(window.worker.model, "context_length", 512)

    ballast = window.store.create_conversation(title="Another conversation")
    for turn in range(BALLAST_TURNS):
        window.store.add_message(ballast, "user" if turn % 2 == 0 else "assistant", f"{turn} {EARLIER_TEXT}")
    small = measure(qtbot, window, 0)
    big = measure(qtbot, window, EARLIER_TURNS)
    (s_short, s_long, _), (b_short, b_long, stored) = small, big
    assert stored > 200_000

    page = window.store.db.execute("PRAGMA page_size").fetchone()[0]
    for label, r in (("short", s_short), ("short", s_long), ("long", b_short), ("long", b_long)):
        figure(
            f"storage: {label} conversation, {r['tokens']}-token reply",
            f"{r['total']:,} bytes, {r['per_token']:,.0f} per token, {len(r['saves'])} saves "
            f"(median {statistics.median(r['saves']):,.0f} bytes, largest {max(r['saves']):,})",
        )

    # A save writes the reply's own pages (its row, the B-tree pages above it, its full-text index
    # entries), and now and then FTS5 merges its small index segments (a burst of up to ~200 KB, for the
    # whole database, whatever the conversation): so bytes are compared per save on average, merges
    # included (the question and the reply's first row are counted in too).
    def per_save(r: dict) -> float:
        return r["total"] / len(r["saves"])

    # The same whatever came before in the conversation ...
    assert per_save(b_long) <= per_save(s_long) * 1.5 + 2 * page
    # ... and however long the reply has grown: level from the 8th token to the 32nd, so the bytes a
    # token costs (at most one save per token) do not grow ...
    for shorter, longer in ((s_short, s_long), (b_short, b_long)):
        assert per_save(longer) <= per_save(shorter) * 1.5 + 2 * page
    # ... and never anything like rewriting the conversation (~240 KB here) at each save.
    assert per_save(b_short) < stored / 4 and per_save(b_long) < stored / 4
    figure(
        "storage: bytes per save of a streaming reply (mean, merges included)",
        f"short conversation {per_save(s_long):,.0f}, ~240 KB conversation {per_save(b_long):,.0f} "
        f"(the app saves at most every {APP_SAVE_SECONDS:g} s; here at every token batch)",
    )
    count("storage: replies measured for bytes written per token", 4)
