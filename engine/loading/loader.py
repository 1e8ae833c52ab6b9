"""From a path (GGUF file or Hugging Face folder) to a ready model, tokenizer and chat template."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.device import resolve_device, resolve_dtype
from engine.errors import ModelFileError, TemplateError, UnsafeTemplateError
from engine.gguf.int4_groups import INT4_TYPES, Int4Groups
from engine.gguf.reader import GGUFFile
from engine.loading.config import ModelConfig
from engine.loading.default_model import default_model_path
from engine.loading.model_file import model_format, open_gguf, open_hf_folder, peek_config
from engine.memory import check_fits, return_freed_memory
from engine.model import Transformer, prompt_matmul
from engine.model.decode_attention import choose as choose_decode_attention
from engine.model.int4_linear import Int4Linear, int4_kernels_available
from engine.model.int8_linear import Int8Linear
from engine.model.prompt_matmul import PromptMatmul
from engine.text.chat_template import ChatTemplate
from engine.text.tokenizer import Tokenizer
from engine.weights.build import build_model, model_from_state, use_int8_head
from engine.weights.from_gguf import gguf_state_dict
from engine.weights.from_hf import SafetensorsSource, hf_state_dict, read_json
from engine.weights.pack_cache import PackCache, default_cache_dir, file_key

__all__ = ["LoadedModel", "load_model", "peek_config"]  # peek_config: engine.loading.model_file's, torch-free
PACKED_MODE = "cpu-bf16-int4-int8head"  # the only mode whose weights are cached: repacking is what costs time
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    template: ChatTemplate
    config: ModelConfig
    path: Path
    file_format: str  # "gguf" or "safetensors"
    weight_types: dict[str, int]  # storage type in the file -> number of tensors
    context_length: int
    load_seconds: float
    memory_estimate: int
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    template_warning: str | None = None  # set when the model's own template was replaced by ChatML
    from_cache: bool = False  # the packed weights came from the weight cache (see `engine.weights.pack_cache`)
    prompt_matmul: PromptMatmul | None = None  # how packed layers multiply a prompt here (None: no packed layer)
    # Held around every pass that uses the model's KV cache (a chat reply, an inspection, a server request):
    # the desktop's engine worker and the server's model worker take turns (`engine.model_lock.hold`).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kernels(self) -> tuple[tuple[str, str], ...]:
        """What this machine's timings chose, in words: (what, the choice and its times)."""
        chosen = [("Decode attention", self.model.decode_attention.describe())]
        if self.prompt_matmul is not None:
            chosen.append(("Prompt projections", self.prompt_matmul.describe()))
        return tuple(chosen)

    @property
    def precision(self) -> str:
        """How the weights compute, in words: the dtype, and any layers kept 4-bit or in int8."""
        dtype = str(self.model.dtype).removeprefix("torch.")
        int4 = sum(isinstance(m, Int4Linear) for m in self.model.modules())
        parts = [f"{dtype} (exact)" if dtype == "float32" else dtype]
        if int4:
            parts.append(f"{int4} projections in packed 4-bit")
        if isinstance(self.model.lm_head, Int8Linear):
            parts.append("int8 output head")
        if self.model.compiled_step is not None:
            parts.append("decoding compiled")
        return ", ".join(parts)

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The conversation in the model's template. A template stopped for what it tried (not one that
        rejects the conversation on purpose) is replaced by ChatML from then on, with a warning."""
        try:
            return self.template.render(messages, add_generation_prompt=add_generation_prompt)
        except UnsafeTemplateError as e:
            self.template, self.template_warning = _fallback(self.tokenizer, e)
            return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids for a rendered prompt; BOS is added only if the model wants it and the text lacks it."""
        bos = self.tokenizer.bos_token
        add_bos = self.tokenizer.add_bos and not (bos and text.startswith(bos))
        return self.tokenizer.encode(text, add_bos=add_bos)


def _check_vocab(path: Path, tokenizer: Tokenizer, cfg: ModelConfig) -> None:
    """Every token id must have an embedding row (fewer tokens than rows is fine: padding)."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelFileError(
            path, f"the tokenizer has {tokenizer.vocab_size} tokens but the embedding only {cfg.vocab_size} rows"
        )


def _fallback(tokenizer: Tokenizer, error: TemplateError) -> tuple[ChatTemplate, str]:
    warning = f"{str(error).rstrip('.')}. Using the ChatML template instead; replies may be worse."
    log.warning(warning)
    return ChatTemplate(None, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""), warning


def _template(source: str | None, tokenizer: Tokenizer) -> tuple[ChatTemplate, str | None]:
    """The model's template, or ChatML with a warning when it cannot be compiled."""
    try:
        return ChatTemplate(source, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""), None
    except TemplateError as e:
        return _fallback(tokenizer, e)


def _cached_model(cfg: ModelConfig, path: Path, cache: PackCache, key: str, progress) -> Transformer | None:
    """The packed model from the weight cache, when it holds one made from this very file."""
    state = cache.load(path, key)
    if state is None:
        return None
    try:
        model = model_from_state(cfg, state, path)
    except Exception as e:  # an entry that reads but does not fit the model code: rebuild it
        log.warning("rebuilding the weight cache: %s", e)
        cache.discard(path)
        return None
    if progress is not None:
        progress(1.0)
    return model


def _packed_weight_bytes(gguf: GGUFFile) -> int:
    """Memory for the weights when 4-bit tensors stay packed (about their size in the file) and the
    others are bf16."""
    return sum(
        info.nbytes if info.ggml_type in INT4_TYPES else math.prod(info.shape) * 2 for info in gguf.tensors.values()
    )


def _load_gguf(
    path: Path, device, dtype, fits: Callable[..., int], progress, cache_dir: Path | None, pack: bool
) -> LoadedModel:
    cfg, gguf = open_gguf(path)  # every declared size checked, against the tensors too
    pack_int4 = pack and device.type == "cpu" and dtype == torch.bfloat16 and int4_kernels_available()
    with gguf:
        estimate = fits(cfg, _packed_weight_bytes(gguf) if pack_int4 else None)
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, str(path))
        names = set(gguf.tensors)
        _check_vocab(path, tokenizer, cfg)

        def get(name: str) -> torch.Tensor:
            if name not in names:
                raise ModelFileError(path, f"missing tensor {name}")
            return gguf.load_tensor(name)

        def get_linear(name: str) -> torch.Tensor | Int4Groups:
            info = gguf.tensors.get(name)
            if pack_int4 and info is not None and info.ggml_type in INT4_TYPES and len(info.shape) == 2:
                return gguf.load_int4_groups(name)
            return get(name)

        cache = PackCache(cache_dir)
        key = file_key(path, PACKED_MODE) if pack_int4 else ""
        model = _cached_model(cfg, path, cache, key, progress) if pack_int4 else None
        from_cache = model is not None
        if model is None:
            model = build_model(cfg, gguf_state_dict(cfg, names, get, get_linear), path, device, dtype, progress)
            if pack_int4:
                use_int8_head(model)
                return_freed_memory()
                # Only models with packed layers (repacking is what the cache saves), and only if the file
                # did not change while it was read.
                if any(isinstance(m, Int4Linear) for m in model.modules()) and file_key(path, PACKED_MODE) == key:
                    cache.save(path, key, model.state_dict())
        if "rope_freqs.weight" in names:  # Llama 3.1 stores its rope scaling as per-frequency factors
            model.rotary.inv_freq = model.rotary.inv_freq / get("rope_freqs.weight").float()
        types = Counter(info.ggml_type.name for info in gguf.tensors.values())
        template, warning = _template(gguf.metadata.get("tokenizer.chat_template"), tokenizer)
    return LoadedModel(
        model,
        tokenizer,
        template,
        cfg,
        path,
        "gguf",
        dict(types.most_common()),
        cfg.max_seq_len,
        0.0,
        estimate,
        template_warning=warning,
        from_cache=from_cache,
    )


def _load_hf(folder: Path, device, dtype, fits: Callable[..., int], progress) -> LoadedModel:
    cfg, files = open_hf_folder(folder)  # every declared size checked, against the tensors too
    estimate = fits(cfg)
    tokenizer = Tokenizer.from_hf_folder(folder)
    _check_vocab(folder, tokenizer, cfg)
    source = SafetensorsSource(files)
    model = build_model(cfg, hf_state_dict(cfg, source.names(), source.get), folder, device, dtype, progress)
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    template_path = folder / "chat_template.jinja"  # newer transformers save the template on its own
    template_source = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    gen_path = folder / "generation_config.json"
    template, warning = _template(template_source or tok_cfg.get("chat_template"), tokenizer)
    return LoadedModel(
        model,
        tokenizer,
        template,
        cfg,
        folder,
        "safetensors",
        source.dtype_counts(),
        cfg.max_seq_len,
        0.0,
        estimate,
        read_json(gen_path) if gen_path.is_file() else {},
        template_warning=warning,
    )


def load_model(
    path: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    context_length: int | None = None,
    check_memory: bool = True,
    progress: Callable[[float], None] | None = None,
    cache_dir: str | Path | None = None,
    pack: bool = True,
) -> LoadedModel:
    """Load a GGUF file or a Hugging Face safetensors folder (None: the default model).

    On the CPU in bf16 (the default there), 4-bit GGUF weights stay packed (unless ``pack`` is False:
    training needs dense weights) and the packed model is kept in ``cache_dir`` (default: the user's cache
    directory, see `engine.weights.pack_cache`) for the next load.

    Raises `ModelFileError` for unusable files, `OutOfMemoryError` (before allocating) when the
    estimate exceeds free memory, and `ValueError` for a bad device or dtype name.
    """
    t0 = time.perf_counter()
    path = Path(path) if path is not None else default_model_path()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kind = model_format(path)

    def fits(cfg: ModelConfig, weight_bytes: int | None = None) -> int:
        ctx = min(context_length or cfg.max_seq_len, cfg.max_seq_len)
        return check_fits(cfg, dt, dev, ctx, path.name, weight_bytes) if check_memory else 0

    if kind == "safetensors":
        lm = _load_hf(path, dev, dt, fits, progress)
    else:
        lm = _load_gguf(path, dev, dt, fits, progress, Path(cache_dir) if cache_dir else None, pack)
    lm.context_length = min(context_length or lm.config.max_seq_len, lm.config.max_seq_len)
    cfg, cache = lm.config, Path(cache_dir) if cache_dir else default_cache_dir()
    choice = choose_decode_attention(
        cfg.n_head, cfg.n_kv_head, cfg.head_dim, lm.model.dtype, dev, cache / "decode_attention.json"
    )
    lm.model.set_decode_attention(choice)
    lm.prompt_matmul = prompt_matmul.choose(lm.model, cache / "prompt_matmul.json")
    if lm.prompt_matmul is not None:
        prompt_matmul.use(lm.model, lm.prompt_matmul)
    lm.load_seconds = time.perf_counter() - t0
    return lm
