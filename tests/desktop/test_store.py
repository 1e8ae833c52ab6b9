"""The conversation store on its own (no Qt): variants, truncation, deletion, search, export and import."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from desktop.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "conversations.sqlite3")
    yield s
    s.close()


def chat(store: Store, *pairs: tuple[str, str]) -> int:
    cid = store.create_conversation("Test", "Be brief.", {"temperature": 0.3, "seed": None})
    for question, answer in pairs:
        store.add_message(cid, "user", question)
        store.add_message(cid, "assistant", answer, meta={"model": "m.gguf"})
    return cid


def contents(store: Store, cid: int) -> list[str]:
    return [m.content for m in store.messages(cid)]


def test_wal_mode_and_schema_version(tmp_path, store):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = sqlite3.connect(tmp_path / "conversations.sqlite3")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("PRAGMA user_version").fetchone()[0] == 1
    other.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "newer.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RuntimeError, match="newer Ember"):
        Store(path)


def test_messages_are_on_disk_at_once(tmp_path, store):
    cid = chat(store, ("Hi", "Hello!"))
    again = Store(tmp_path / "conversations.sqlite3")
    assert contents(again, cid) == ["Hi", "Hello!"]
    assert again.conversation(cid).settings == {"temperature": 0.3, "seed": None}
    again.close()


def test_variants(store):
    cid = chat(store, ("Hi", "first"))
    store.add_message(cid, "assistant", "second", turn=1)
    store.add_message(cid, "assistant", "third", turn=1)
    last = store.messages(cid)[-1]
    assert (last.content, last.variant, last.variants) == ("third", 2, 3)
    store.select_variant(cid, 1, 0)
    last = store.messages(cid)[-1]
    assert (last.content, last.variant, last.variants) == ("first", 0, 3)
    assert len(store.messages(cid)) == 2  # one shown version per turn


def test_update_message_and_status(store):
    cid = chat(store, ("Hi", ""))
    mid = store.messages(cid)[-1].id
    store.update_message(mid, content="Hel", status="stopped", meta={"seed": 7})
    m = store.messages(cid)[-1]
    assert (m.content, m.status, m.meta) == ("Hel", "stopped", {"seed": 7})


def test_truncate(store):
    cid = chat(store, ("one", "1"), ("two", "2"), ("three", "3"))
    store.truncate(cid, 2)
    assert contents(store, cid) == ["one", "1"]
    store.add_message(cid, "user", "again")
    assert [m.turn for m in store.messages(cid)] == [0, 1, 2]


def test_delete_turn_closes_the_gap(store):
    cid = chat(store, ("one", "1"), ("two", "2"))
    store.add_message(cid, "assistant", "2b", turn=3)
    store.delete_turn(cid, 1)
    messages = store.messages(cid)
    assert [(m.turn, m.content) for m in messages] == [(0, "one"), (1, "two"), (2, "2b")]
    assert messages[-1].variants == 2  # the variants moved with their turn


def test_delete_conversation_deletes_its_messages(store):
    cid = chat(store, ("one", "1"))
    store.delete_conversation(cid)
    assert store.conversations() == []
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert store.search("one") == []


def test_full_text_search(store):
    a = chat(store, ("What is the capital of France?", "Paris is the capital."))
    b = chat(store, ("Name a river", "The Seine flows through Paris."))
    store.update_conversation(b, title="Rivers")
    hits = store.search("paris")
    assert {h.conversation_id for h in hits} == {a, b}
    assert all("[" in h.snippet and "]" in h.snippet for h in hits)
    assert [h.conversation_id for h in store.search("Seine Paris")] == [b]
    assert [h.title for h in store.search("riv")] == ["Rivers"]  # words are prefixes, for search-as-you-type
    assert store.search("Rome") == []
    assert store.search('"  ') == []  # quotes are escaped, not FTS syntax errors
    assert store.search("   ") == []


def test_search_follows_edits(store):
    cid = chat(store, ("Hi", "Hello"))
    mid = store.messages(cid)[-1].id
    store.update_message(mid, content="Bonjour")
    assert store.search("Hello") == []
    assert [h.message_id for h in store.search("Bonjour")] == [mid]


def test_export_import_round_trip(store):
    cid = chat(store, ("What is 2+2?", "4"), ("And 3+3?", "6"))
    store.add_message(cid, "assistant", "six", turn=3, status="stopped", meta={"seed": 1})
    store.select_variant(cid, 3, 0)
    exported = store.export_json(cid)
    text = json.dumps(exported)  # what the export file holds
    new = store.import_json(json.loads(text))
    assert new != cid
    assert store.export_json(new) == exported
    assert [(m.content, m.variant, m.variants) for m in store.messages(new)] == [
        (m.content, m.variant, m.variants) for m in store.messages(cid)
    ]


def test_markdown_export(store):
    cid = chat(store, ("Show code", "```python\nprint(1)\n```"))
    store.update_message(store.messages(cid)[-1].id, status="stopped")
    md = store.export_markdown(cid)
    assert md.startswith("# Test")
    assert "**System:** Be brief." in md
    assert "## User\n\nShow code" in md
    assert "## Assistant *(stopped)*\n\n```python\nprint(1)\n```" in md


def malformed_exports():
    good = {
        "format": "ember-conversation",
        "version": 1,
        "title": "t",
        "system_prompt": "",
        "settings": {"temperature": 0.5},
        "messages": [
            {"turn": 0, "variant": 0, "active": True, "role": "user", "content": "hi"},
            {"turn": 1, "variant": 0, "active": True, "role": "assistant", "content": "yo", "meta": {}},
        ],
    }

    def changed(path, value):
        data = copy.deepcopy(good)
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return data

    return [
        [],
        "text",
        {**good, "format": "something-else"},
        changed(("messages",), {"0": "hi"}),
        changed(("messages", 0), "hi"),
        changed(("messages", 0, "role"), "system"),
        changed(("messages", 0, "turn"), KeyError),
        changed(("messages", 0, "turn"), "zero"),
        changed(("messages", 0, "turn"), -1),
        changed(("messages", 0, "turn"), 1.5),
        changed(("messages", 0, "variant"), None),
        changed(("messages", 0, "content"), ["hi"]),
        changed(("messages", 0, "status"), "exploded"),
        changed(("messages", 1, "meta"), "not an object"),
        changed(("messages", 1, "turn"), 0),  # two turn-0 variant-0 messages
        changed(("messages", 1, "active"), False),  # turn 1 with nothing shown
        changed(("settings",), ["temperature"]),
        changed(("settings", "temperature"), "hot"),
    ], good


@pytest.mark.parametrize("data", malformed_exports()[0])
def test_malformed_imports_are_rejected(store, data):
    with pytest.raises(ValueError):
        store.import_json(data)
    assert store.conversations() == []  # nothing half-imported


def test_the_valid_reference_export_imports(store):
    cid = store.import_json(malformed_exports()[1])
    assert contents(store, cid) == ["hi", "yo"]
