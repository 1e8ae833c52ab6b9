"""Finding the models other apps keep, in their real layouts under a temporary home folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import gguf
import pytest

from engine.loading import model_library
from engine.loading.model_library import ADDED, Place, describe_model, model_places, scan_models
from tests.engine.tiny_gguf import write_tiny_gguf

QUANTIZED = dict(n_embd=256, n_head=2, n_kv_head=1, head_dim=128, ff=256)  # rows of whole 256-blocks


def _ollama(home: Path, model: Path, name: str, tag: str) -> Path:
    """``model`` as Ollama stores it: a blob named by its digest and a manifest naming the blob."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    blobs = home / ".ollama" / "models" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, blobs / f"sha256-{digest}")
    manifest = home / ".ollama" / "models" / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return blobs / f"sha256-{digest}"


def _hf_repo(home: Path, repo: str, files: dict[str, Path], revision: str = "0123abcd") -> Path:
    """A hub cache repository whose snapshot links each file to a blob, as huggingface_hub writes it."""
    root = home / ".cache" / "huggingface" / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, source in files.items():
        blob = root / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_models) -> Path:
    """A home folder with every app's layout, a broken file and an unsupported architecture."""
    home = tmp_path_factory.mktemp("home")
    files = tmp_path_factory.mktemp("files")
    tiny = write_tiny_gguf(files / "tiny.gguf")
    q4 = write_tiny_gguf(files / "tiny-q4.gguf", sizes=QUANTIZED, weight_type=gguf.GGMLQuantizationType.Q4_0)

    lms = home / ".lmstudio" / "models" / "someone" / "Tiny-GGUF"
    lms.mkdir(parents=True)
    shutil.copy(q4, lms / "tiny.Q4_0.gguf")
    old_lms = home / ".cache" / "lm-studio" / "models" / "other" / "Old-GGUF"
    old_lms.mkdir(parents=True)
    shutil.copy(tiny, old_lms / "old.F32.gguf")

    _ollama(home, q4, "tiny", "latest")
    bad = home / ".ollama" / "models" / "manifests" / "registry.ollama.ai" / "library"
    (bad / "broken" / "latest").parent.mkdir(parents=True)
    (bad / "broken" / "latest").write_text("{not json")
    (bad / "deep" / "latest").parent.mkdir(parents=True)
    (bad / "deep" / "latest").write_text("[" * 200_000)
    (bad / "escape" / "latest").parent.mkdir(parents=True)
    escape = {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../etc"}]}
    (bad / "escape" / "latest").write_text(json.dumps(escape))

    folder, _ = tiny_models("llama")
    hf_files = {p.name: p for p in folder.iterdir() if p.is_file()}
    _hf_repo(home, "org/tiny-llama", hf_files)
    _hf_repo(home, "org/tiny-GGUF", {"tiny.F32.gguf": tiny})

    gpt4all = home / ".local" / "share" / "nomic.ai" / "GPT4All"
    gpt4all.mkdir(parents=True)
    shutil.copy(tiny, gpt4all / "tiny-chat.gguf")

    added = home / "my models"
    (added / "nested" / "hf").mkdir(parents=True)
    for f in hf_files.values():
        shutil.copy(f, added / "nested" / "hf" / f.name)
    (added / "broken.gguf").write_bytes(tiny.read_bytes()[:200])  # truncated inside the metadata
    (added / "notes.txt").write_text("not a model")
    (added / "deep-config").mkdir()
    (added / "deep-config" / "config.json").write_text("[" * 200_000)
    (added / "deep-config" / "model.safetensors").write_bytes(b"\xff" * 16)
    write_tiny_gguf(added / "mamba.gguf", {"general.architecture": ("mamba", gguf.GGUFValueType.STRING)})
    return home


def _by_name(home: Path):
    places = model_places(home, "linux", env={}, added=[home / "my models"])
    return {m.name: m for m in scan_models(places)}


def test_every_app_layout_is_found_and_described(home: Path, tiny_models) -> None:
    found = _by_name(home)
    expected_apps = {
        "someone/Tiny-GGUF/tiny.Q4_0.gguf": "LM Studio",
        "other/Old-GGUF/old.F32.gguf": "LM Studio",
        "tiny:latest": "Ollama",
        "org/tiny-llama": "Hugging Face",
        "org/tiny-GGUF/tiny.F32.gguf": "Hugging Face",
        "tiny-chat.gguf": "GPT4All",
        "nested/hf": ADDED,
        "broken.gguf": ADDED,
        "deep-config": ADDED,
        "mamba.gguf": ADDED,
    }
    assert {name: m.app for name, m in found.items()} == expected_apps

    lms = found["someone/Tiny-GGUF/tiny.Q4_0.gguf"]
    assert (lms.family, lms.quantization, lms.context_length, lms.problem) == ("llama", "Q4_0", 64, "")
    assert lms.size_bytes == lms.path.stat().st_size and lms.openable
    ollama = found["tiny:latest"]
    assert ollama.path.name.startswith("sha256-") and (ollama.family, ollama.quantization) == ("llama", "Q4_0")
    assert found["tiny-chat.gguf"].quantization == "F32"

    hf = found["org/tiny-llama"]
    weights = sum(p.stat().st_size for p in hf.path.glob("*.safetensors"))
    reference = tiny_models("llama")[1].config
    assert (hf.family, hf.context_length, hf.size_bytes) == ("llama", reference.max_position_embeddings, weights)
    assert hf.quantization == "F32" and hf.openable and found["nested/hf"].openable


def test_broken_and_unsupported_files_give_reasons(home: Path) -> None:
    found = _by_name(home)
    broken = found["broken.gguf"]
    assert not broken.openable and "truncated" in broken.problem and broken.size_bytes == 200
    deep = found["deep-config"]
    assert not deep.openable and deep.problem and (deep.family, deep.size_bytes) == ("", 16)
    mamba = found["mamba.gguf"]
    assert mamba.family == "mamba" and not mamba.openable
    assert "'mamba'" in mamba.problem and "supported: llama" in mamba.problem
    assert mamba.quantization == "F32" and mamba.size_bytes == mamba.path.stat().st_size


def test_unknown_tensor_type_is_a_reason(tmp_path: Path) -> None:
    iq2 = gguf.GGMLQuantizationType.IQ2_XXS  # its blocks are random bytes: never decoded
    path = write_tiny_gguf(tmp_path / "iq2.gguf", sizes=QUANTIZED, weight_type=iq2)
    model = describe_model(path, "iq2", ADDED)
    assert (model.family, model.quantization, model.context_length) == ("llama", "IQ2_XXS", 64)
    assert model.problem == "Ember cannot decode its IQ2_XXS tensors"


def test_a_header_too_slow_to_read_is_given_up(tmp_path: Path, monkeypatch) -> None:
    """A valid file with a million metadata strings, against a time limit it cannot meet."""
    n = 1_000_000
    path = tmp_path / "slow.gguf"
    header = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", 4) + b"many"
    path.write_bytes(
        header + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, n) + bytes(8 * n)
    )
    monkeypatch.setattr(model_library, "HEADER_SECONDS", 0.01)
    model = describe_model(path, "slow", ADDED)
    assert not model.openable and "header took longer than 0.01 s to read" in model.problem
    assert model.size_bytes == path.stat().st_size


def test_places_follow_the_platform_and_environment(tmp_path: Path) -> None:
    def gpt4all(platform: str) -> Path:
        return next(p.root for p in model_places(tmp_path, platform) if p.app == "GPT4All")

    assert gpt4all("linux") == tmp_path / ".local" / "share" / "nomic.ai" / "GPT4All"
    assert gpt4all("darwin") == tmp_path / "Library" / "Application Support" / "nomic.ai" / "GPT4All"
    assert gpt4all("win32") == tmp_path / "AppData" / "Local" / "nomic.ai" / "GPT4All"
    env = {"HF_HOME": str(tmp_path / "hf"), "OLLAMA_MODELS": str(tmp_path / "ollama")}
    roots = {p.app: p.root for p in model_places(tmp_path, "linux", env)}
    assert roots["Hugging Face"] == tmp_path / "hf" / "hub" and roots["Ollama"] == tmp_path / "ollama"
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    assert {p.app: p.root for p in model_places(tmp_path, "linux", env)}["Hugging Face"] == tmp_path / "hub"


def test_a_model_found_twice_is_listed_once(home: Path) -> None:
    """An added folder that is also an app's place (here through a symlink) adds nothing."""
    link = home.parent / f"{home.name}-link"
    link.symlink_to(home / ".local" / "share" / "nomic.ai" / "GPT4All")
    places = [*model_places(home, "linux", env={}), Place(ADDED, link, "files")]
    names = [m.name for m in scan_models(places)]
    assert names.count("tiny-chat.gguf") == 1 and len(names) == len(set(names))


def test_stop_ends_the_scan_early(home: Path) -> None:
    places = model_places(home, "linux", env={})
    asked = []
    found = scan_models(places, lambda: asked.append(1) or len(asked) > 2)
    assert [m.name for m in found] == [m.name for m in scan_models(places)[:2]]
    stopped = threading.Event()
    stopped.set()
    assert scan_models(places, stopped) == []


def test_an_empty_home_has_no_models(tmp_path: Path) -> None:
    assert scan_models(model_places(tmp_path, "linux", env={}, added=[tmp_path / "gone"])) == []


def test_scanning_imports_no_torch(home: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from engine.loading.model_library import model_places, scan_models; "
        f"found = scan_models(model_places(Path({str(home)!r}), 'linux', env={{}})); "
        "assert len(found) == 6 and all(m.openable for m in found), found; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
