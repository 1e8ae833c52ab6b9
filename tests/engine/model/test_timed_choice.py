"""Kept kernel timings (`engine.model.timed_choice`): those taken on a busy machine are timed again once it is
quiet, then kept; the load average decides what busy is."""

from __future__ import annotations

import os

import torch

from engine.model import decode_attention as da
from engine.model import timed_choice


def test_a_timing_taken_while_busy_is_taken_again_once_the_machine_is_quiet(tmp_path, monkeypatch):
    file = tmp_path / "decode_attention.json"
    timings = []

    def measure(*_):
        timings.append(len(timings))
        return {"sdpa": 50.0, "sdpa_f32": 60.0}

    monkeypatch.setattr(da, "measure", measure)
    monkeypatch.setattr(timed_choice, "busy", lambda: True)
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "measured"
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "cached"  # still busy: kept meanwhile
    monkeypatch.setattr(timed_choice, "busy", lambda: False)
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "measured"  # quiet: timed again
    monkeypatch.setattr(timed_choice, "busy", lambda: True)
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "cached"  # a quiet timing is for good
    monkeypatch.setattr(timed_choice, "busy", lambda: False)
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "cached"
    assert len(timings) == 2


def test_busy_is_the_last_minutes_load_per_core(monkeypatch):
    monkeypatch.undo()  # the suite's quiet machine (tests/conftest.py) off: the real function
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 0.2, 0.1))
    assert timed_choice.busy()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 3.0, 3.0))  # the last minute counts
    assert not timed_choice.busy()

    def unsupported():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unsupported)
    assert not timed_choice.busy()
