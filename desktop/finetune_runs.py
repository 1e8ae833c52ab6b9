"""The fine-tuning runs the app remembers: one frozen `RunRecord` per run, in ``finetune_runs.json`` in the
data folder (written atomically). A record changes by `dataclasses.replace`, never in place.

A damaged runs file is set aside (``finetune_runs.damaged.json``), not overwritten; a run the app stopped
during (``"running"`` on disk) reads back as ``"interrupted"``, and can be resumed from its checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from desktop.presets import write_json_atomic

RUNS_FILE = "finetune_runs.json"
RESUMABLE = ("cancelled", "interrupted", "failed")


@dataclass(frozen=True)
class RunRecord:
    out_dir: str  # the run's folder: its checkpoints, adapter and exports; the run's identity
    name: str  # when it started, for the list
    paths: tuple[str, ...] = ()  # the files and folders it trained on
    model: str = ""  # the path of the model it trained
    config: dict[str, Any] = field(default_factory=dict)  # `engine.finetune.FinetuneConfig` fields
    status: str = "running"  # then "finished", "cancelled", "interrupted" or "failed"
    step: int = 0
    total_steps: int | None = None
    history: tuple[dict[str, Any], ...] = ()  # per step {"step", "train_loss", "val_loss"?, ...}
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    adapter_dir: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # merged_dir, gguf_path, gguf_skipped, as written
    error: str | None = None  # why it failed
    recall: dict[str, Any] | None = None  # `engine.finetune.probes.Recall.to_json` of a finished run

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("name", Path(data["out_dir"]).name)
        values["paths"] = tuple(values.get("paths") or ())
        values["history"] = tuple(values.get("history") or ())
        if values.get("status") == "running":  # the app stopped during that run
            values["status"] = "interrupted"
        return cls(**values)


def load_runs(path: Path) -> list[RunRecord]:
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        path.replace(path.with_suffix(".damaged.json"))  # kept aside, not overwritten
        return []
    if not isinstance(runs, list):
        return []
    return [RunRecord.from_json(r) for r in runs if isinstance(r, dict) and "out_dir" in r]


def save_runs(path: Path, runs: list[RunRecord]) -> None:
    write_json_atomic(path, [asdict(r) for r in runs])
