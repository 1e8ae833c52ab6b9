"""No code from data: the program's source never unpickles, evals or trusts remote code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    r"\bimport pickle\b|\bpickle\.load": "unpickling",
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"trust_remote_code\s*=\s*True": "trusting remote code",
}


def test_program_source_runs_no_code_from_data():
    offenders = []
    for package in ("engine", "desktop"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern, what in FORBIDDEN.items():
                for match in re.finditer(pattern, text):
                    line = text.count("\n", 0, match.start()) + 1
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert offenders == []


def test_the_scan_would_catch_offenders():
    sample = "x = pickle.load(f)\ny = torch.load(p)\nz = eval(s)\nm(trust_remote_code=True)"
    hits = [what for pattern, what in FORBIDDEN.items() if re.search(pattern, sample)]
    assert len(hits) == 4
    assert not re.search(list(FORBIDDEN)[1], "torch.load(p, weights_only=True)")
