"""Conversations and messages in SQLite (WAL), with full-text search, export and import.

Qt-free. Every write is its own transaction, so a message is on disk as soon as it is complete and a
crash loses at most the reply being written (which is saved as far as it got when stopped).

A conversation is a list of turns; each turn holds one or more *variants* (regenerated replies, as
textgen's "← 2/3 →"), of which one is active.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
EXPORT_FORMAT = "ember-conversation"
STATUSES = ("complete", "stopped", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    variant INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_turn ON messages(conversation_id, turn, variant);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
"""


@dataclass
class Message:
    id: int
    turn: int
    variant: int
    role: str
    content: str
    status: str = "complete"  # complete | stopped | interrupted
    meta: dict[str, Any] = field(default_factory=dict)
    variants: int = 1  # how many variants this turn has


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str
    settings: dict[str, Any]
    updated: float


@dataclass
class SearchHit:
    conversation_id: int
    title: str
    message_id: int
    snippet: str


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer Ember (schema {version})")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self.db)

    # Conversations

    def create_conversation(
        self, title: str = "New chat", system_prompt: str = "", settings: dict[str, Any] | None = None
    ) -> int:
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO conversations(title, system_prompt, settings, created, updated) VALUES (?,?,?,?,?)",
            (title, system_prompt, json.dumps(settings or {}), now, now),
        )
        return cur.lastrowid

    def conversations(self) -> list[Conversation]:
        rows = self.db.execute("SELECT * FROM conversations ORDER BY updated DESC, id DESC").fetchall()
        return [self._conversation(r) for r in rows]

    def conversation(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT * FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return self._conversation(row)

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(row["id"], row["title"], row["system_prompt"], _json(row["settings"]), row["updated"])

    def update_conversation(
        self,
        conversation_id: int,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        fields = {
            "title": title,
            "system_prompt": system_prompt,
            "settings": None if settings is None else json.dumps(settings),
        }
        sets = {k: v for k, v in fields.items() if v is not None}
        if not sets:
            return
        assignments = ", ".join(f"{k}=?" for k in sets)
        self.db.execute(
            f"UPDATE conversations SET {assignments}, updated=? WHERE id=?",
            (*sets.values(), time.time(), conversation_id),
        )

    def delete_conversation(self, conversation_id: int) -> None:
        self.db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    # Messages

    def messages(self, conversation_id: int) -> list[Message]:
        """The active variant of every turn, in order."""
        rows = self.db.execute(
            "SELECT m.*, (SELECT COUNT(*) FROM messages v WHERE v.conversation_id=m.conversation_id "
            "AND v.turn=m.turn) AS n FROM messages m WHERE conversation_id=? AND active=1 ORDER BY turn",
            (conversation_id,),
        ).fetchall()
        return [
            Message(r["id"], r["turn"], r["variant"], r["role"], r["content"], r["status"], _json(r["meta"]), r["n"])
            for r in rows
        ]

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        status: str = "complete",
        meta: dict[str, Any] | None = None,
        turn: int | None = None,
    ) -> int:
        """Append a turn, or (with ``turn``) add a new active variant to an existing turn."""
        with self._tx():
            if turn is None:
                row = self.db.execute(
                    "SELECT COALESCE(MAX(turn) + 1, 0) FROM messages WHERE conversation_id=?", (conversation_id,)
                ).fetchone()
                turn, variant = row[0], 0
            else:
                row = self.db.execute(
                    "SELECT COALESCE(MAX(variant) + 1, 0) FROM messages WHERE conversation_id=? AND turn=?",
                    (conversation_id, turn),
                ).fetchone()
                variant = row[0]
                self.db.execute(
                    "UPDATE messages SET active=0 WHERE conversation_id=? AND turn=?", (conversation_id, turn)
                )
            cur = self.db.execute(
                "INSERT INTO messages(conversation_id, turn, variant, active, role, content, status, meta, created)"
                " VALUES (?,?,?,1,?,?,?,?,?)",
                (conversation_id, turn, variant, role, content, status, json.dumps(meta or {}), time.time()),
            )
            self.db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conversation_id))
        return cur.lastrowid

    def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        status: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        fields = {"content": content, "status": status, "meta": None if meta is None else json.dumps(meta)}
        sets = {k: v for k, v in fields.items() if v is not None}
        if sets:
            assignments = ", ".join(f"{k}=?" for k in sets)
            self.db.execute(f"UPDATE messages SET {assignments} WHERE id=?", (*sets.values(), message_id))

    def select_variant(self, conversation_id: int, turn: int, variant: int) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE messages SET active=(variant=?) WHERE conversation_id=? AND turn=?",
                (variant, conversation_id, turn),
            )

    def truncate(self, conversation_id: int, from_turn: int) -> None:
        """Delete every turn from ``from_turn`` on (edit-and-resend, delete message)."""
        self.db.execute("DELETE FROM messages WHERE conversation_id=? AND turn>=?", (conversation_id, from_turn))

    def delete_turn(self, conversation_id: int, turn: int) -> None:
        """Delete one turn (all its variants) and close the gap."""
        with self._tx():
            self.db.execute("DELETE FROM messages WHERE conversation_id=? AND turn=?", (conversation_id, turn))
            self.db.execute(
                "UPDATE messages SET turn=turn-1 WHERE conversation_id=? AND turn>?", (conversation_id, turn)
            )

    # Search, export, import

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Messages holding every word of ``query``; the words are prefixes ("Par" finds "Paris")."""
        terms = " ".join('"' + t.replace('"', '""') + '"*' for t in query.split())
        if not terms:
            return []
        rows = self.db.execute(
            "SELECT m.conversation_id, c.title, m.id, snippet(messages_fts, 0, '[', ']', '…', 8) AS snip "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?",
            (terms, limit),
        ).fetchall()
        return [SearchHit(r[0], r[1], r[2], r[3]) for r in rows]

    def export_json(self, conversation_id: int) -> dict[str, Any]:
        c = self.conversation(conversation_id)
        rows = self.db.execute(
            "SELECT * FROM messages WHERE conversation_id=? ORDER BY turn, variant", (conversation_id,)
        ).fetchall()
        return {
            "format": EXPORT_FORMAT,
            "version": SCHEMA_VERSION,
            "title": c.title,
            "system_prompt": c.system_prompt,
            "settings": c.settings,
            "messages": [
                {
                    "turn": r["turn"],
                    "variant": r["variant"],
                    "active": bool(r["active"]),
                    "role": r["role"],
                    "content": r["content"],
                    "status": r["status"],
                    "meta": _json(r["meta"]),
                }
                for r in rows
            ],
        }

    def export_markdown(self, conversation_id: int) -> str:
        c = self.conversation(conversation_id)
        parts = [f"# {c.title}\n"]
        if c.system_prompt:
            parts.append(f"**System:** {c.system_prompt}\n")
        for m in self.messages(conversation_id):
            note = "" if m.status == "complete" else f" *({m.status})*"
            parts.append(f"## {m.role.capitalize()}{note}\n\n{m.content}\n")
        return "\n".join(parts)

    def import_json(self, data: dict[str, Any]) -> int:
        """Import an exported conversation as a new one; raises ValueError on anything malformed."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ValueError("not an Ember conversation export")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ValueError("the export has no message list")
        rows = [_imported_message(m) for m in messages]
        keys = [(r["turn"], r["variant"]) for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError("two messages in the export have the same turn and version")
        shown = Counter(r["turn"] for r in rows if r["active"])
        if any(shown[turn] != 1 for turn, _ in keys):
            raise ValueError("a turn in the export does not have exactly one shown version")
        settings = data.get("settings", {})
        if not isinstance(settings, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in settings.values()
        ):
            raise ValueError("the export's sampling settings are not an object of numbers")
        with self._tx():
            cid = self.create_conversation(
                str(data.get("title", "Imported chat")), str(data.get("system_prompt", "")), settings
            )
            for r in rows:
                self.db.execute(
                    "INSERT INTO messages(conversation_id, turn, variant, active, role, content, status, meta, created)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        cid,
                        r["turn"],
                        r["variant"],
                        int(r["active"]),
                        r["role"],
                        r["content"],
                        r["status"],
                        json.dumps(r["meta"]),
                        time.time(),
                    ),
                )
        return cid


def _imported_message(m: Any) -> dict[str, Any]:
    """One exported message, checked field by field (ValueError), with the defaults filled in."""
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise ValueError("a message in the export has no valid role")
    turn, variant = m.get("turn"), m.get("variant", 0)
    for name, value in (("turn", turn), ("variant", variant)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise ValueError(f"a message in the export has no valid {name}: {value!r}")
    content, status, meta = m.get("content", ""), m.get("status", "complete"), m.get("meta", {})
    if not isinstance(content, str):
        raise ValueError("a message in the export has content that is not text")
    if status not in STATUSES:
        raise ValueError(f"a message in the export has an unknown status: {status!r}")
    if not isinstance(meta, dict):
        raise ValueError("a message in the export has metadata that is not an object")
    return {
        "turn": turn,
        "variant": variant,
        "active": bool(m.get("active", True)),
        "role": m["role"],
        "content": content,
        "status": status,
        "meta": meta,
    }


def _json(text: str) -> dict[str, Any]:
    """A stored JSON object; a damaged one reads as empty instead of hiding the whole conversation."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
