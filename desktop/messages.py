"""What crosses between the UI thread and the workers: frozen dataclasses, one per kind of signal payload.

They live in one module, apart from the workers, so the UI side (the chat session, the controllers, the
panels) names what it receives without importing a worker and the torch code behind it, and so the data
that crosses threads can be read in one place. Each worker's class docstring lists its signals with the
type each one carries (all emitted as ``Signal(object)``). Frozen: a payload is built once on the worker
thread and only read after; fields are tuples, never lists, so nothing can be appended on either side.
Sampler settings and fine-tune configs travel as read-only mappings (the worker builds the engine's
`SamplerSettings` / `FinetuneConfig` from them, so a bad value fails there, as a failure signal).
The engine's own results cross as they are (`engine.inspection.inspect.Inspection` and `Candidate`,
`engine.inspection.explain.Explanation` and `WordOrder`, `engine.finetune.probes.Recall`,
`engine.loading.model_library.Place` and `LibraryModel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from engine.loading.model_library import LibraryModel, Place


def frozen_map(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``values``, for a field of a request."""
    return MappingProxyType(dict(values))


# Requests to the engine worker (desktop.engine_worker)


@dataclass(frozen=True)
class GenerateRequest:
    prompt_ids: tuple[int, ...]
    settings: Mapping[str, Any]  # sampler settings
    max_tokens: int = 512
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteGenerateRequest:
    messages: tuple[Mapping[str, str], ...]  # {"role", "content"}, sent as they are
    settings: Mapping[str, Any]
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)  # in memory only: never stored, never logged
    max_tokens: int = 512
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassRequest:
    """One pass over ``ids`` with these sampler settings: an inspection, or the "How it works" walk."""

    ids: tuple[int, ...]
    settings: Mapping[str, Any]


# What the engine worker sends


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model's facts for the UI (``loaded``), again once its decoding step is built (``compiled``)."""

    path: str
    name: str
    format: str
    architecture: str
    parameters: int
    layers: int
    context_length: int
    weight_types: tuple[tuple[str, int], ...]  # (storage type in the file, number of tensors)
    device: str
    dtype: str
    precision: str
    load_seconds: float
    template: str  # "the model's own" or "ChatML (fallback)"
    template_warning: str | None
    compile_warning: str | None  # why decoding is not compiled, when it was asked for and failed
    memory_estimate: int
    fingerprint: str  # `desktop.engine_worker.fingerprint` of the file or folder
    kernels: tuple[tuple[str, str], ...]  # what this machine's timings chose: (what, choice and times)


@dataclass(frozen=True)
class GenerationStarted:
    prompt_tokens: int  # 0 for a remote model: its server counts the prompt
    context_length: int  # 0 for a remote model
    remote: bool = False


@dataclass(frozen=True)
class Token:
    """One generated token (``tokens`` carries them in batches, as a tuple, in order)."""

    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class GenerationResult:
    """A finished reply (``generationFinished``), local or remote, stopped or complete."""

    text: str
    finish_reason: str  # "eos", "stop", "length", "context" or "cancelled"
    prompt_tokens: int
    cached_tokens: int  # of the prompt's tokens, those the KV cache already held (the conversation so far)
    generated_tokens: int
    prefill_tps: float
    decode_tps: float
    seed: int | None
    logprobs: tuple[dict[str, Any], ...] | None = None  # a remote reply's per-token data, for the inspector


@dataclass(frozen=True)
class Lens:
    """The logit lens at ``position`` of the last inspection: per layer, its top candidates."""

    position: int
    rows: tuple[Any, ...]  # per layer, a list of engine.inspection.inspect.Candidate


# The remote connector (desktop.remote_worker)


@dataclass(frozen=True)
class ModelList:
    base_url: str
    model_ids: tuple[str, ...]


# The fine-tune worker (desktop.finetune_worker): requests


@dataclass(frozen=True)
class PreviewRequest:
    paths: tuple[str, ...]
    settings: Mapping[str, Any]  # the panel's `FinetuneConfig` fields; None: chosen from the files


@dataclass(frozen=True)
class TrainRequest:
    paths: tuple[str, ...]
    config: Mapping[str, Any]  # `engine.finetune.FinetuneConfig` fields
    out_dir: str
    resume: bool


# What the fine-tune worker sends


@dataclass(frozen=True)
class PreviewFile:
    path: str
    tokens: int
    chunks: int
    skipped: str | None  # the reason, when nothing of the file was used
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Preview:
    """What a run on ``paths`` would train on (``previewed``)."""

    paths: tuple[str, ...]
    files: tuple[PreviewFile, ...]
    samples: tuple[str, ...]  # the first training chunks, as text
    summary: str
    train_chunks: int
    val_chunks: int
    train_tokens: int
    flops_per_second: float  # this machine's matrix-multiply rate in a LoRA run's dtype, for the estimate
    full_flops_per_second: float  # the same in float32, which full fine-tuning trains in
    lora_dtype_bytes: int = 4  # bytes of a base weight in a LoRA run (2: bf16, see engine.finetune.precision)
    probes: int = 0  # recall questions made from the files
    planned: Mapping[str, Any] = field(default_factory=lambda: frozen_map({}))  # the settings a run would use
    reasons: tuple[str, ...] = ()  # why the settings chosen from the files are what they are


@dataclass(frozen=True)
class RunStarted:
    out_dir: str
    resume: bool
    config: Mapping[str, Any] = field(default_factory=lambda: frozen_map({}))  # the settings it runs with


@dataclass(frozen=True)
class RunOutputs:
    """What a run wrote, each None until it exists."""

    adapter_dir: str | None = None
    merged_dir: str | None = None
    gguf_path: str | None = None
    gguf_skipped: str | None = None  # why there is no GGUF file

    def written(self) -> dict[str, str]:
        """The outputs that exist, as the runs file keeps them."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RunEnded:
    """A run finished or was stopped (``finished``); a failure is ``failed(out_dir, message)``."""

    out_dir: str
    status: str  # "finished" or "cancelled"
    step: int
    total_steps: int | None
    history: tuple[dict[str, Any], ...]  # per step {"step", "train_loss", "val_loss"?, "lr"}, as the runs file keeps it
    outputs: RunOutputs
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    recall: Any = None  # engine.finetune.probes.Recall: the probe questions answered before and after


@dataclass(frozen=True)
class Exported:
    """A finished LoRA run's merged outputs were written (``exported``)."""

    out_dir: str
    outputs: RunOutputs


@dataclass(frozen=True)
class ScoredToken:
    index: int
    id: int
    text: str
    base: float  # log-probability under the base model
    tuned: float
    diff: float  # tuned - base


@dataclass(frozen=True)
class Scored:
    """The per-token log-probability difference between the tuned and the base model (``scored``)."""

    tokens: tuple[ScoredToken, ...]
    mean_diff: float
    start: int  # the first scored position


@dataclass(frozen=True)
class Compared:
    """The base and the tuned model's greedy replies to one prompt (``compareDone``)."""

    base: str
    tuned: str
    scored: Scored | None  # the tuned reply scored under both; None when stopped before
    cancelled: bool


# The model library scanner (desktop.library_worker)


@dataclass(frozen=True)
class ScanRequest:
    """Where to look for models (``requestScan``)."""

    places: tuple[Place, ...]


@dataclass(frozen=True)
class FoundModels:
    """What a scan found, in the order found (``scanned``); ``stopped`` when it ended early."""

    models: tuple[LibraryModel, ...]
    stopped: bool = False
