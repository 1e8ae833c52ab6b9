"""A model path opened just far enough to know its config, every value checked, without torch.

A GGUF file's header, metadata and tensor infos, or a Hugging Face folder's ``config.json`` and safetensors
headers: `engine.loading.model_check` holds the declared sizes against each other and against the tensors. This is
the loader's first step, and all that `peek_config` does, so `ember-cli` and the desktop's model panel refuse
a bad file in a fraction of a second, before torch is imported (about a second on its own).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelFileError
from engine.gguf.reader import GGUFFile, read_gguf
from engine.loading.config import ModelConfig, hf_keys
from engine.loading.default_model import default_model_path
from engine.loading.model_check import ConfigError, check_tensors, hf_names
from engine.weights.from_hf import PICKLE_SUFFIXES, read_config, safetensors_files, tensor_shapes

GGUF_MAGIC = b"GGUF"


def model_format(path: Path) -> str:
    """``"gguf"`` for a GGUF file, ``"safetensors"`` for a folder; `ModelFileError` for anything else."""
    if not path.exists():
        raise ModelFileError(path, "no such file or folder")
    if path.is_dir():
        return "safetensors"
    if path.suffix in PICKLE_SUFFIXES:
        raise ModelFileError(path, "a pickle file; Ember never unpickles. Convert the model to safetensors or GGUF.")
    if not path.is_file():
        raise ModelFileError(path, "not a regular file, nor a Hugging Face model folder")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(path, f"cannot open the file: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(path, "not a GGUF file (bad magic) nor a Hugging Face model folder")
    return "gguf"


def open_gguf(path: Path) -> tuple[ModelConfig, GGUFFile]:
    """The GGUF file's checked config, and the file left open for its tensors (the caller closes it)."""
    gguf = read_gguf(path)
    try:
        shapes = {name: info.shape for name, info in gguf.tensors.items()}
        return ModelConfig.from_gguf(gguf.metadata, shapes), gguf
    except ValueError as e:  # ConfigError naming the key, or an unsupported architecture
        gguf.close()
        raise ModelFileError(path, f"unusable model metadata: {e}") from None


def open_hf_folder(folder: Path) -> tuple[ModelConfig, list[Path]]:
    """The folder's checked config (against the safetensors headers too) and its weight files."""
    cfg = read_config(folder)
    files = safetensors_files(folder)
    shapes = tensor_shapes(files)
    try:
        check_tensors(cfg, shapes, hf_keys(cfg.arch), hf_names(cfg.arch, shapes))
    except ConfigError as e:
        raise ModelFileError(folder / "config.json", f"unusable config: {e}") from None
    return cfg, files


def peek_config(path: str | Path | None = None) -> ModelConfig:
    """The model's shape, checked, without loading weights or importing torch (None: the default model)."""
    path = Path(path) if path is not None else default_model_path()
    if model_format(path) == "safetensors":
        return open_hf_folder(path)[0]
    cfg, gguf = open_gguf(path)
    gguf.close()
    return cfg
