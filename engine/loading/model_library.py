"""The models already on this computer: GGUF files and Hugging Face folders where other apps keep them.

`model_places` says where LM Studio, Ollama, the Hugging Face hub cache and GPT4All keep their models (from a
home folder and a platform, so tests point it at a temporary one), plus folders the user added. `scan_models`
lists what they hold, each file described from its header alone (`engine.gguf.reader`'s bounded parser, the
safetensors headers, `engine.loading.model_check`): its name, family, size on disk, quantization, context
length and, when Ember cannot open it, why. No tensor data is read and torch is not imported; a header that
takes longer than `HEADER_SECONDS` to read (the default model's, 49k tokens of vocabulary, takes under
0.1 s) is given up. A broken or hostile file gives its reason, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import SafetensorError, safe_open

from engine.errors import EmberError, ModelFileError
from engine.gguf.reader import read_gguf
from engine.gguf.types import SUPPORTED_TYPES
from engine.loading.config import ModelConfig
from engine.loading.model_file import open_hf_folder
from engine.stop_signal import StopSignal, is_stopped

ADDED = "Added folder"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
JSON_LIMIT = 1 << 20  # bytes read of an Ollama manifest (a few hundred) or a config.json (a few thousand)
WALK_DEPTH = 6  # folder levels searched below a place (LM Studio's publisher/repo/file is 2)
HEADER_SECONDS = 5.0  # the longest a GGUF header may take to read (the default model's: under 0.1 s)
WALK_LIMIT = 20_000  # folder entries looked at per place, so a home folder added by mistake stays quick
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_UNQUANTIZED = {"F32", "F16", "BF16", "F64"}


@dataclass(frozen=True)
class Place:
    """Where one app keeps its models: ``kind`` says how they are laid out there."""

    app: str  # shown to the user: "LM Studio", "Ollama", "Hugging Face", "GPT4All", `ADDED`
    root: Path
    kind: str  # "files" (GGUF files and model folders below it), "ollama" or "hf-cache"


@dataclass(frozen=True)
class LibraryModel:
    """One model found, described from its header. ``problem`` is empty when Ember can open it."""

    path: Path
    name: str
    app: str
    family: str  # the architecture ("llama", "qwen2"…), empty when unreadable
    size_bytes: int
    quantization: str  # the storage type most weights are in ("Q4_K", "BF16"), empty when unreadable
    context_length: int  # 0 when unknown
    problem: str = ""

    @property
    def openable(self) -> bool:
        return not self.problem


def model_places(
    home: Path, platform: str = sys.platform, env: Mapping[str, str] | None = None, added: Sequence[Path] = ()
) -> list[Place]:
    """Where the apps keep models under ``home`` on ``platform`` (``sys.platform``'s spelling), honouring
    ``HF_HUB_CACHE``/``HF_HOME`` and ``OLLAMA_MODELS`` in ``env`` (default: none), then the ``added`` folders."""
    env = {} if env is None else env
    hf_home = Path(env["HF_HOME"]) if env.get("HF_HOME") else home / ".cache" / "huggingface"
    if platform == "darwin":
        gpt4all = home / "Library" / "Application Support" / "nomic.ai" / "GPT4All"
    elif platform.startswith("win"):
        gpt4all = home / "AppData" / "Local" / "nomic.ai" / "GPT4All"
    else:
        gpt4all = home / ".local" / "share" / "nomic.ai" / "GPT4All"
    return [
        Place("LM Studio", home / ".lmstudio" / "models", "files"),
        Place("LM Studio", home / ".cache" / "lm-studio" / "models", "files"),
        Place("Ollama", Path(env.get("OLLAMA_MODELS") or home / ".ollama" / "models"), "ollama"),
        Place("Hugging Face", Path(env.get("HF_HUB_CACHE") or hf_home / "hub"), "hf-cache"),
        Place("GPT4All", gpt4all, "files"),
        *(Place(ADDED, Path(folder), "files") for folder in added),
    ]


def scan_models(places: Sequence[Place], stop: StopSignal = None) -> list[LibraryModel]:
    """Every model in ``places``, each path once (the first place that finds it names its app), in the order
    found; ``stop`` (checked between files) ends the scan early with what was found so far."""
    found: list[LibraryModel] = []
    seen: set[Path] = set()
    for place in places:
        for name, path in _candidates(place):
            if is_stopped(stop):
                return found
            key = _resolved(path)
            if key not in seen:
                seen.add(key)
                found.append(describe_model(path, name, place.app))
    return found


def describe_model(path: Path, name: str, app: str) -> LibraryModel:
    """``path`` (a GGUF file or a Hugging Face folder) described from its header; a problem, never a raise."""
    describe = _describe_folder if path.is_dir() else _describe_gguf
    try:
        return describe(path, name, app)
    except (EmberError, OSError, ValueError, UnicodeError) as e:
        reason = e.reason if isinstance(e, ModelFileError) else str(e) or type(e).__name__
        return LibraryModel(path, name, app, "", _size(path), "", 0, reason)


def _describe_gguf(path: Path, name: str, app: str) -> LibraryModel:
    size = path.stat().st_size
    with read_gguf(path, time_limit=HEADER_SECONDS) as gguf:
        arch = gguf.metadata.get("general.architecture")
        family = arch if isinstance(arch, str) else ""
        declared = gguf.metadata.get(f"{family}.context_length")
        context = declared if isinstance(declared, int) else 0
        types = Counter(info.ggml_type for info in gguf.tensors.values())
        quantized = Counter({t.name: n for t, n in types.items() if t.name not in _UNQUANTIZED})
        quantization = (quantized or Counter({t.name: n for t, n in types.items()})).most_common(1)
        model = LibraryModel(path, name, app, family, size, quantization[0][0] if quantization else "", context)
        try:
            cfg = ModelConfig.from_gguf(gguf.metadata, {n: info.shape for n, info in gguf.tensors.items()})
        except ValueError as e:  # ConfigError naming the key, or an unsupported architecture
            return replace(model, problem=f"unusable model metadata: {e}")
        unknown = sorted({t.name for t in types if t not in SUPPORTED_TYPES})
        if unknown:
            return replace(model, problem=f"Ember cannot decode its {', '.join(unknown)} tensors")
    return replace(model, context_length=cfg.max_seq_len)


def _describe_folder(folder: Path, name: str, app: str) -> LibraryModel:
    declared = _read_json(folder / "config.json")
    family = declared.get("model_type", "") if isinstance(declared, dict) else ""
    files = sorted(folder.glob("*.safetensors"))
    model = LibraryModel(folder, name, app, str(family), sum(_size(f) for f in files), _safetensors_dtype(files), 0)
    try:
        cfg, _files = open_hf_folder(folder)
    except ModelFileError as e:
        return replace(model, problem=e.reason)
    return replace(model, family=cfg.arch, context_length=cfg.max_seq_len)


def _read_json(path: Path) -> object:
    """The JSON in the first `JSON_LIMIT` bytes of ``path``; None when unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(JSON_LIMIT))
    except (OSError, ValueError, RecursionError):  # RecursionError: arrays nested too deep
        return None


def _safetensors_dtype(files: Sequence[Path]) -> str:
    """The dtype most tensors are stored in, from the headers; empty if none can be read."""
    counts: Counter[str] = Counter()
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as handle:
                counts.update(handle.get_slice(n).get_dtype().upper() for n in handle.keys())
        except (SafetensorError, OSError):
            continue
    return counts.most_common(1)[0][0] if counts else ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path


def _candidates(place: Place) -> Iterator[tuple[str, Path]]:
    """(name, path) of every model ``place`` seems to hold, before any file is opened."""
    if not place.root.is_dir():
        return iter(())
    finders: dict[str, Callable[[Path], Iterator[tuple[str, Path]]]] = {
        "files": _files_below,
        "ollama": _ollama_models,
        "hf-cache": _hf_cache_models,
    }
    return finders[place.kind](place.root)


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _files_below(root: Path) -> Iterator[tuple[str, Path]]:
    """GGUF files and Hugging Face folders below ``root``, named by their path under it; symlinked folders
    are not followed, and the walk stops after `WALK_LIMIT` entries."""
    looked = 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        looked += len(dirs) + len(files)
        if looked > WALK_LIMIT:
            return
        if len(here.relative_to(root).parts) >= WALK_DEPTH:
            dirs.clear()
        dirs.sort()
        if _is_hf_folder(here):
            yield (here.relative_to(root).as_posix() if here != root else here.name), here
        for file in sorted(files):
            if file.lower().endswith(".gguf"):
                yield (here / file).relative_to(root).as_posix(), here / file


def _ollama_models(root: Path) -> Iterator[tuple[str, Path]]:
    """Ollama's manifests (manifests/<host>/<namespace>/<model>/<tag>, JSON) and the blob each names as its
    model; names as Ollama shows them (``llama3.2:1b``, ``user/model:tag``)."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(manifests.glob("*/*/*/*")):
        host, namespace, model, tag = manifest.relative_to(manifests).parts
        name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
        if host != "registry.ollama.ai":
            name = f"{host}/{name}"
        blob = _ollama_blob(manifest, root / "blobs")
        if blob is not None:
            yield name, blob


def _ollama_blob(manifest: Path, blobs: Path) -> Path | None:
    """The model layer's blob path from a manifest; None for one that is unreadable or has no model layer."""
    manifest_json = _read_json(manifest)
    layers = manifest_json.get("layers") if isinstance(manifest_json, dict) else None
    for layer in layers if isinstance(layers, list) else ():
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL:
            digest = _DIGEST.fullmatch(str(layer.get("digest", "")))
            return blobs / f"sha256-{digest.group(1)}" if digest else None
    return None


def _hf_cache_models(hub: Path) -> Iterator[tuple[str, Path]]:
    """The hub cache's models--<org>--<name> repositories: in the snapshot that refs/main names (else the
    newest), each GGUF file, and the snapshot itself when it is a Hugging Face folder."""
    for repo in sorted(hub.glob("models--*")):
        snapshot = _hf_snapshot(repo)
        if snapshot is None:
            continue
        repo_name = repo.name.removeprefix("models--").replace("--", "/")
        if _is_hf_folder(snapshot):
            yield repo_name, snapshot
        for name, path in _files_below(snapshot):
            if path.is_file():
                yield f"{repo_name}/{name}", path


def _hf_snapshot(repo: Path) -> Path | None:
    snapshots = repo / "snapshots"
    try:
        main = (repo / "refs" / "main").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        main = ""
    if main and re.fullmatch(r"[0-9a-f]{7,64}", main) and (snapshots / main).is_dir():
        return snapshots / main
    try:
        revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(revisions, key=lambda p: p.stat().st_mtime, default=None)
