"""Facts found in prose, the questions made from them, the recall probes and the plan chosen from a corpus."""

from __future__ import annotations

import random

from engine.finetune.facts import facts, key_phrases, sentences
from engine.finetune.lessons import lessons, question
from engine.finetune.plan import MIN_STEPS, plan
from engine.finetune.probes import FRAME, Answer, Recall, build_probes, recalled, report

NOTE = """# The Copperfield Rowing Club

The Copperfield Rowing Club was started by Agnes Whitlow in 1903 on the river Lusk.
Its boathouse holds fourteen boats and a bell named Old Tamsin.

The regatta takes place on the second Sunday of June. Dues are nine crowns a year, paid in May.
"""


def test_sentences_keep_their_heading_and_drop_the_heading_line():
    pairs = sentences(NOTE)
    assert [h for h, _ in pairs] == ["The Copperfield Rowing Club"] * 4
    assert pairs[0][1] == "The Copperfield Rowing Club was started by Agnes Whitlow in 1903 on the river Lusk."
    assert all(not s.startswith("#") for _, s in pairs)


def test_key_phrases_find_names_years_numbers_and_times():
    keys = key_phrases("The Copperfield Rowing Club was started by Agnes Whitlow in 1903 on the river Lusk.")
    assert [(k.text, k.kind) for k in keys] == [
        ("Copperfield Rowing Club", "name"),
        ("Agnes Whitlow", "name"),
        ("1903", "year"),
        ("Lusk", "name"),
    ]
    assert [
        (k.text, k.kind) for k in key_phrases("Its boathouse holds fourteen boats and a bell named Old Tamsin.")
    ] == [
        ("fourteen boats", "number"),
        ("Old Tamsin", "name"),
    ]
    dues = key_phrases("Dues are nine crowns a year, paid in May.")
    assert ("nine crowns", "number") in [(k.text, k.kind) for k in dues]
    assert ("May", "when") in [(k.text, k.kind) for k in dues]
    assert key_phrases("It was a quiet and ordinary afternoon by the water.") == ()


def test_a_question_asks_for_the_key_in_the_sentences_own_words():
    fact = facts(NOTE)[0]
    by_text = {k.text: k for k in fact.keys}
    assert question(fact, by_text["Agnes Whitlow"]) == (
        "The Copperfield Rowing Club was started by who in 1903 on the river Lusk?"
    )
    assert question(fact, by_text["1903"]) == (
        "The Copperfield Rowing Club was started by Agnes Whitlow in what year on the river Lusk?"
    )
    boats = facts(NOTE)[1]
    assert question(boats, boats.keys[0]).startswith("Its boathouse holds how many boats")


def test_lessons_answer_with_the_fact_and_cover_every_key():
    fact = facts(NOTE)[0]
    chats = list(lessons(fact, random.Random(0)))
    assert all(c[0]["role"] == "user" and c[1]["role"] == "assistant" for c in chats)
    answers = {c[1]["content"] for c in chats}
    assert fact.sentence in answers
    asked = " ".join(c[0]["content"] for c in chats)
    for key in fact.keys:  # every key phrase is asked for (replaced by its question word) somewhere
        assert any(key.text not in c[0]["content"] and fact.sentence in c[1]["content"] for c in chats)
    assert "What do my notes say about The Copperfield Rowing Club?" in asked


def test_probes_are_phrased_apart_from_the_lessons_and_spread_over_files():
    other = "Lighthouse keeper Bram Osk lit the lamp at Gull Point in 1871 for the last time."
    probes = build_probes([("club.md", NOTE), ("point.txt", other)], limit=3)
    assert [p.source for p in probes] == ["club.md", "point.txt", "club.md"]
    assert probes[0].question == FRAME.format(
        q="The Copperfield Rowing Club was started by who in 1903 on the river Lusk?"
    )
    assert probes[0].expected == "Agnes Whitlow"
    lesson_questions = {c[0]["content"] for f in facts(NOTE) for c in lessons(f, random.Random(0))}
    assert not {p.question for p in probes} & lesson_questions


def test_recalled_needs_every_word_of_the_answer():
    assert recalled("It was founded by Agnes Whitlow, a rower.", "Agnes Whitlow")
    assert not recalled("It was founded by Agnes Smith.", "Agnes Whitlow")
    assert recalled("The club has 1,903 members", "1903")
    assert not recalled("", "1903")


def test_summary_and_report_show_before_and_after():
    probes = build_probes([("club.md", NOTE)], limit=1)
    before = [Answer(probes[0], "Nobody knows.", False)]
    after = [Answer(probes[0], "Agnes Whitlow started it.", True)]
    s = Recall(tuple(zip(before, after, strict=True))).to_json()
    assert (s["recalled_before"], s["recalled_after"]) == (0, 1)
    text = report(s)
    assert "0/1 before, 1/1 after" in text and "Agnes Whitlow started it." in text and "Nobody knows." in text


def test_the_plan_drills_small_corpora_and_reads_large_ones_once():
    small, large = plan(600, 3, 15, batch_size=4), plan(2_000_000, 8000, 8000, batch_size=4)
    assert small.lessons and not large.lessons
    assert small.epochs > large.epochs == 1.0
    assert small.lr > large.lr
    assert small.val_fraction == 0.0 and "every one is needed" in " ".join(small.reasons)
    assert large.val_fraction > 0
    assert small.epochs >= plan(15_000, 60, 240, batch_size=4).epochs


def test_a_tiny_corpus_still_gets_enough_steps():
    one_note = plan(80, 1, 4, batch_size=4)  # one short note: 12 passes would be 12 steps
    assert one_note.epochs * 4 / 4 >= MIN_STEPS
    assert f"{one_note.epochs:g} passes" in one_note.reasons[0]
