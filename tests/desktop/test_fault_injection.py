"""Fault injection in the app: an unexpected exception at a random point inside a reply, an inspection, the
"How it works" walk and a fine-tuning run (`tests.faults`). After each fault the user is told, the window
stays usable, nothing already saved is lost, and the next request gives exactly what a clean one gives (the
model, its KV cache and its LoRA layers were not left half-changed). The server's trials are in
tests/engine/server/test_server_faults.py.

Trials per kind (with the server's 50: 225): replies 80, inspections 40, walks 25, word-order comparisons
15, fine-tuning runs 15. The points are drawn from a fixed seed, uniformly over a clean run's calls.
"""

from __future__ import annotations

import copy
import hashlib
import random
from pathlib import Path

import pytest

from desktop.finetune_runs import RunRecord
from desktop.finetune_worker import detach_lora
from engine.finetune.lora import lora_layers
from tests.desktop.helpers import greedy, send_and_wait
from tests.faults import Injector, fault_points
from tests.hardening import count, figure

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000
PROMPT = "Name three colours."
SEED = 19


def trial_rng(kind: str) -> random.Random:
    return random.Random(f"{SEED}-{kind}")


def saved(window) -> dict[int, list[tuple]]:
    """Every conversation's messages as stored: what must survive a fault."""
    return {
        c.id: [(m.id, m.role, m.content, m.status) for m in window.store.messages(c.id)]
        for c in window.store.conversations()
    }


def report(kind: str, fired: int, trials: int) -> None:
    count(f"fault injection: {kind} with a fault at a random point", trials)
    figure(f"fault injection: {kind}, faults that fired", f"{fired} of {trials}")
    assert fired >= trials * 0.8, f"only {fired} of {trials} faults fired: the points miss the request"


@pytest.fixture
def injector(window, monkeypatch):
    """An injector around each worker slot a trial drives (patched on the instances, as their signals call them)."""
    inj = Injector()
    for name in ("_on_generate", "_on_inspect", "_on_explain", "_on_word_order"):
        monkeypatch.setattr(window.worker, name, inj.wrap(getattr(window.worker, name)))
    monkeypatch.setattr(window.finetune.worker, "_on_train", inj.wrap(window.finetune.worker._on_train))
    return inj


def reply(qtbot, window, injector: Injector, at: int | None) -> str:
    """A new conversation, PROMPT sent with a fault at call ``at``; the reply as saved."""
    window.new_conversation()
    injector.arm(at)
    send_and_wait(qtbot, window, PROMPT)
    injector.disarm()
    return window.store.messages(window.cid)[-1].content


def test_replies(qtbot, window, dialogs, injector, fresh_prefill):
    greedy(window, 6)
    reference = reply(qtbot, window, injector, None)
    calls = injector.calls
    assert reference and calls > 100
    fired = 0
    for at in fault_points(trial_rng("reply"), calls, 80):
        before = saved(window)
        warnings = len(dialogs.texts("warning"))
        text = reply(qtbot, window, injector, at)
        last = window.store.messages(window.cid)[-1]
        if injector.fired:
            fired += 1
            assert dialogs.texts("warning")[warnings:] == [dialogs.texts("warning")[-1]]
            assert "InjectedFault" in dialogs.texts("warning")[-1], dialogs.texts("warning")[-1]
            assert last.role == "assistant" and last.status == "interrupted" and reference.startswith(text)
        else:
            assert text == reference and last.status == "complete"
        assert window.session.reply is None and window.chat.send.isEnabled()
        after = saved(window)
        assert {cid: after[cid] for cid in before} == before, "a fault changed what was already saved"
        assert reply(qtbot, window, injector, None) == reference, f"the reply after a fault at {injector.fired}"
    report("replies", fired, 80)


def inspect_last(qtbot, window, injector: Injector, at: int | None):
    injector.arm(at)
    window.inspector_panel.result = None
    window.inspector.inspect_last()
    qtbot.waitUntil(lambda: not window.inspector.busy, timeout=TIMEOUT_MS)
    injector.disarm()
    return window.inspector_panel.result


def test_inspections(qtbot, window, dialogs, injector):
    greedy(window, 6)
    send_and_wait(qtbot, window, PROMPT)
    reference = inspect_last(qtbot, window, injector, None)
    calls = injector.calls
    assert reference is not None
    fired = 0
    for at in fault_points(trial_rng("inspect"), calls, 40):
        before = saved(window)
        result = inspect_last(qtbot, window, injector, at)
        if injector.fired:
            fired += 1
            assert result is None and "InjectedFault" in window.inspector_panel.summary.text()
        assert window.inspector_panel.inspect_button.isEnabled()
        assert saved(window) == before
        again = inspect_last(qtbot, window, injector, None)
        assert again is not None, window.inspector_panel.summary.text()
        assert (again.ids, again.token_logprobs) == (reference.ids, reference.token_logprobs)
    report("inspections", fired, 40)


def walk(qtbot, window, injector: Injector, at: int | None, text: str):
    panel = window.how_panel
    injector.arm(at)
    panel.explanation = None
    window.how_it_works.open(text)
    qtbot.waitUntil(lambda: not window.how_it_works.busy, timeout=TIMEOUT_MS)
    injector.disarm()
    return panel.explanation


def compare_orders(qtbot, window, injector: Injector, at: int | None):
    got = []
    window.worker.wordOrderCompared.connect(got.append)
    window.worker.explainFailed.connect(got.append)
    injector.arm(at)
    window.how_it_works._on_compare("the dog bit the man", "the man bit the dog")
    qtbot.waitUntil(lambda: bool(got), timeout=TIMEOUT_MS)
    injector.disarm()
    window.worker.wordOrderCompared.disconnect(got.append)
    window.worker.explainFailed.disconnect(got.append)
    return got[0]


def test_walks_and_word_order_comparisons(qtbot, window, injector):
    window.sampling.inputs["temperature"].setValue(0)
    text = "The lighthouse keeper counted the ships until"
    reference = walk(qtbot, window, injector, None, text)
    calls = injector.calls
    fired = 0
    for at in fault_points(trial_rng("walk"), calls, 25):
        e = walk(qtbot, window, injector, at, text)
        if injector.fired:
            fired += 1
            assert e is None and "InjectedFault" in window.how_panel.status.text()
        else:
            assert (e.ids, e.sampled_id) == (reference.ids, reference.sampled_id)
        again = walk(qtbot, window, injector, None, text)
        assert again is not None and (again.ids, again.sampled_id) == (reference.ids, reference.sampled_id)
        assert again.sharpening == reference.sharpening
    report("walks", fired, 25)

    reference = compare_orders(qtbot, window, injector, None)
    calls = injector.calls
    fired = 0
    for at in fault_points(trial_rng("word order"), calls, 15):
        result = compare_orders(qtbot, window, injector, at)
        if injector.fired:
            fired += 1
            assert isinstance(result, str) and "InjectedFault" in result
        else:
            assert (result.top, result.swapped_top) == (reference.top, reference.swapped_top)
        again = compare_orders(qtbot, window, injector, None)
        assert (again.top, again.swapped_top) == (reference.top, reference.swapped_top)
    report("word-order comparisons", fired, 15)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_finetuning_runs(qtbot, window, dialogs, injector, tmp_path, default_model, fresh_prefill):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "harbour.md").write_text(
        "# The harbour of Velm\n\nThe harbour master of Velm is Odile Farren. She rings the tide bell at six.\n"
    )
    (notes / "boats.txt").write_text("Velm's fishing boats are painted ochre and named after winds.\n")
    greedy(window, 6)
    chat_reference = reply(qtbot, window, injector, None)
    panel, ft = window.finetune_panel, window.finetune
    panel.set_paths([str(notes)])
    qtbot.waitUntil(lambda: panel.files.topLevelItemCount() == 2, timeout=TIMEOUT_MS)
    panel.auto.setChecked(False)  # the test's own small settings
    panel.probes.setChecked(False)
    panel.rank.setValue(2)
    panel.seq_len.setValue(32)
    panel.batch.setValue(1)
    panel.steps.setValue(2)
    panel.checkpoint_every.setValue(1)

    def run(at: int | None) -> RunRecord:
        injector.arm(at)
        ft.start()
        qtbot.waitUntil(lambda: not ft.training, timeout=TIMEOUT_MS)
        injector.disarm()
        return ft.runs[-1]

    try:
        first = copy.deepcopy(run(None))
        calls = injector.calls
        assert first.status == "finished", first
        kept = digest(Path(first.out_dir))
        fired = 0
        for at in fault_points(trial_rng("finetune"), calls, 15):
            record = run(at)
            if injector.fired:
                fired += 1
                assert record.status == "failed" and "InjectedFault" in record.error
                assert "InjectedFault" in panel.status.text()
            assert panel.start.isEnabled()
            assert digest(Path(first.out_dir)) == kept, "a failed run changed an earlier run's files"
            assert ft.runs[0] == first
            assert not lora_layers(default_model.model), "a failed run left LoRA layers in the chat's model"
            assert reply(qtbot, window, injector, None) == chat_reference
        report("fine-tuning runs", fired, 15)
    finally:
        detach_lora(default_model.model)
