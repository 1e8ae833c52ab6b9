"""The engine on a worker thread: loading, generation and inspection never run on the UI thread.

`EngineWorker` is a QObject moved to its own QThread. The UI asks for work through queued signals
(`requestLoad`, `requestLens`, `requestWordOrder`, `requestExplain(PassRequest)`, and
`requestGenerate(GenerateRequest)` / `requestInspect(PassRequest)` through `generate()` / `inspect()`; a
remote server's reply: `requestRemoteGenerate(RemoteGenerateRequest)` through `generate_remote()`, whose
per-token logprobs come back in ``generationFinished`` for the inspector) and cancels through a
`threading.Event` it sets directly; the worker answers with frozen payloads (its class docstring). Tokens are
batched: at most one `tokens` signal per ~33 ms. Every pass over the model holds its lock
(`engine.model_lock.hold`), so a server serving the same model (`desktop.serve_controller`) takes turns
with the chat. Every request ends in its result or its failure signal, whatever it raises
(`desktop.worker_boundary`): a bug is logged with its traceback and the thread takes the next request.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from desktop.messages import (
    GenerateRequest,
    GenerationResult,
    GenerationStarted,
    Lens,
    ModelInfo,
    PassRequest,
    RemoteGenerateRequest,
    Token,
)
from desktop.worker_boundary import boundary
from engine.compiled.background import BackgroundCompile
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.inspection.explain import explain, word_order_demo
from engine.inspection.inspect import Inspection, InspectionCancelled, inspect, logit_lens
from engine.loading.loader import LoadedModel, load_model
from engine.model_lock import hold
from engine.remote import RemoteClient, RemoteError, normalise_base_url

BATCH_SECONDS = 1 / 30
TOP_LOGPROBS = 5  # alternatives per token asked of a remote server, for the inspector


def fingerprint(path: Path) -> str:
    """A cheap identity for a model file or folder: sizes, plus SHA-256 of the first and last MiB of
    each weight file (hashing gigabytes on every load would take longer than the load)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(size - (1 << 20), 0))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def model_info(lm: LoadedModel, compile_warning: str | None = None) -> ModelInfo:
    cfg = lm.config
    return ModelInfo(
        path=str(lm.path),
        name=lm.name,
        format=lm.file_format,
        architecture=cfg.arch,
        parameters=cfg.n_params,
        layers=cfg.n_layer,
        context_length=lm.context_length,
        weight_types=tuple(lm.weight_types.items()),
        device=str(lm.model.device),
        dtype=str(lm.model.dtype).removeprefix("torch."),
        precision=lm.precision,
        load_seconds=lm.load_seconds,
        template="ChatML (fallback)" if lm.template.is_fallback else "the model's own",
        template_warning=lm.template_warning,
        compile_warning=compile_warning,
        memory_estimate=lm.memory_estimate,
        fingerprint=fingerprint(lm.path),
        kernels=lm.kernels,
    )


def generation_result(gen, logprobs: list | None = None) -> GenerationResult:
    """What ``gen`` (a local `Generation` or a remote stream, run to its end) produced."""
    s = gen.stats
    return GenerationResult(
        text=gen.text,
        finish_reason=gen.finish_reason,
        prompt_tokens=s.prompt_tokens,
        cached_tokens=s.cached_tokens,
        generated_tokens=s.generated_tokens,
        prefill_tps=s.prefill_tokens_per_second,
        decode_tps=s.decode_tokens_per_second,
        seed=gen.seed,
        logprobs=tuple(logprobs) if logprobs else None,
    )


class EngineWorker(QObject):
    """Its requests (queued to its thread) and what it answers; the payload types are in `desktop.messages`.

    Requests:
        requestLoad(str path, str device, str dtype, bool compile, int context) -- path "" is the default model,
            context 0 the model's own
        requestGenerate(GenerateRequest)   -- through `generate`
        requestRemoteGenerate(RemoteGenerateRequest) -- through `generate_remote`
        requestInspect(PassRequest)        -- through `inspect`
        requestLens(int position)          -- in the last inspection
        requestExplain(PassRequest)        -- the "How it works" walk
        requestWordOrder(str text, str swapped)

    Signals:
        loadStarted(str path)
        loadProgress(int percent)
        loaded(ModelInfo)            -- model facts for the UI
        loadFailed(str message)      -- the previous model stays loaded and usable
        compileStarted(str message)  -- building the compiled decoding step, after `loaded` (the model answers)
        compiled(ModelInfo)          -- the model's facts again: compiled, or why not (``compile_warning``)
        generationStarted(GenerationStarted) -- prompt tokens, context length
        tokens(tuple[Token, ...])    -- a batch, in order
        generationFinished(GenerationResult) -- text, finish_reason, stats
        generationFailed(str message)
        inspectionProgress(int percent)
        inspected(Inspection)        -- tokens, log-probs, candidates, attention (CPU tensors)
        inspectionFailed(str message)
        lens(Lens)                   -- the logit lens at a position of the last inspection
        explained(Explanation)       -- the "How it works" walk (requestExplain)
        explainFailed(str message)
        wordOrderCompared(WordOrder) -- next-token predictions after two word orders (requestWordOrder)
    """

    requestLoad = Signal(str, str, str, bool, int)  # path ("" = default model), device, dtype, compile, context
    requestGenerate = Signal(object)  # GenerateRequest
    requestRemoteGenerate = Signal(object)  # RemoteGenerateRequest

    loadStarted = Signal(str)
    loadProgress = Signal(int)
    compileStarted = Signal(str)  # emitted from the compiling thread
    compiled = Signal(object)  # emitted from the compiling thread
    loaded = Signal(object)
    loadFailed = Signal(str)
    generationStarted = Signal(object)
    tokens = Signal(object)
    generationFinished = Signal(object)
    generationFailed = Signal(str)
    requestInspect = Signal(object)  # PassRequest
    requestLens = Signal(int)  # position in the last inspection
    inspectionProgress = Signal(int)
    inspected = Signal(object)  # engine.inspection.inspect.Inspection (lists and CPU tensors, no model reference)
    inspectionFailed = Signal(str)
    lens = Signal(object)
    requestExplain = Signal(object)  # PassRequest: the "How it works" walk
    requestWordOrder = Signal(str, str)  # two texts whose next-token predictions to compare
    explained = Signal(object)  # engine.inspection.explain.Explanation
    explainFailed = Signal(str)
    wordOrderCompared = Signal(object)  # engine.inspection.explain.WordOrder

    def __init__(self) -> None:
        super().__init__()
        self.cancel_flag = threading.Event()
        self._compiling: BackgroundCompile | None = None
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()  # guards _model, read by the UI thread for prompt previews
        self.requestLoad.connect(self._on_load)
        self.requestGenerate.connect(self._on_generate)
        self.requestRemoteGenerate.connect(self._on_remote_generate)
        self.requestInspect.connect(self._on_inspect)
        self.requestLens.connect(self._on_lens)
        self.requestExplain.connect(self._on_explain)
        self.requestWordOrder.connect(self._on_word_order)
        self._inspection: Inspection | None = None
        self.remote_without_logprobs: set[tuple[str, str]] = set()  # (base URL, model): refused them

    @property
    def model(self) -> LoadedModel | None:
        """The loaded model; the UI thread may use its tokenizer and template (never its weights)."""
        with self._lock:
            return self._model

    def generate(self, request: GenerateRequest) -> None:
        """Called on the UI thread: queue a generation. The cancel flag is cleared here, not when the
        worker starts, so a Stop pressed before the worker picks the request up still counts."""
        self.cancel_flag.clear()
        self.requestGenerate.emit(request)

    def generate_remote(self, request: RemoteGenerateRequest) -> None:
        """Called on the UI thread: queue a reply from a remote server (`_on_remote_generate`); the same
        signals, batching and cancel flag as a local generation."""
        self.cancel_flag.clear()
        self.requestRemoteGenerate.emit(request)

    def inspect(self, request: PassRequest) -> None:
        """Called on the UI thread: queue an inspection pass (cancelled by `cancel`)."""
        self.cancel_flag.clear()
        self.requestInspect.emit(request)

    def cancel(self) -> None:
        """Thread-safe: the running generation stops after the current token."""
        self.cancel_flag.set()

    @Slot(str, str, str, bool, int)
    @boundary("loadFailed", "loading the model")
    def _on_load(self, path: str, device: str, dtype: str, compile: bool, context: int) -> None:
        self.stop_compiling()  # the current model's build, if one runs
        self.loadStarted.emit(path)
        last = [-1]

        def progress(fraction: float) -> None:
            percent = int(fraction * 100)
            if percent != last[0]:
                last[0] = percent
                self.loadProgress.emit(percent)

        lm = load_model(path or None, device=device, dtype=dtype, context_length=context or None, progress=progress)
        with self._lock:
            self._model = lm
        self.loaded.emit(model_info(lm))
        if compile:
            self._compile_in_background(lm)

    def stop_compiling(self, wait_s: float = 0.0) -> None:
        """Thread-safe: a build of the compiled decoding step stops (its processes are killed within
        ~0.1 s); ``wait_s``: wait that long for it (the window closing, so that none is left behind)."""
        if self._compiling is not None:
            self._compiling.stop(wait_s)

    def _compile_in_background(self, lm: LoadedModel) -> None:
        """Give the model its compiled decoding step (engine.compiled.background): the model answers
        uncompiled meanwhile, and each step after the swap is compiled. A failure leaves it eager and says
        why; a stop (another model, the window closing) says nothing."""

        def done(reason: str | None) -> None:
            if self.model is lm:  # not for a model already replaced
                self.compiled.emit(model_info(lm, reason and f"Not compiled, running uncompiled: {reason}"))

        self._compiling = BackgroundCompile(lm, self.compileStarted.emit, done)

    @Slot(object)
    @boundary("inspectionFailed", "the inspection")
    def _on_inspect(self, request: PassRequest) -> None:
        lm = self.model
        if lm is None:
            self.inspectionFailed.emit("No model is loaded.")
            return
        try:
            with hold(lm, self.cancel_flag) as held:  # the model may be serving a request: take turns
                if not held:
                    raise InspectionCancelled("cancelled while waiting for the model")
                result = inspect(
                    lm.model,
                    lm.tokenizer,
                    list(request.ids),
                    settings=SamplerSettings(**request.settings),
                    should_stop=self.cancel_flag,
                    progress=lambda f: self.inspectionProgress.emit(int(f * 100)),
                )
        except InspectionCancelled:
            self.inspectionFailed.emit("Inspection cancelled.")
            return
        self._inspection = result
        self.inspected.emit(result)

    @Slot(int)
    @boundary("inspectionFailed", "the logit lens")
    def _on_lens(self, position: int) -> None:
        lm, result = self.model, self._inspection
        if lm is not None and result is not None and 0 <= position < len(result.ids):
            with hold(lm):
                rows = logit_lens(lm.model, lm.tokenizer, result, position)
            self.lens.emit(Lens(position, tuple(rows)))

    @Slot(object)
    @boundary("explainFailed", "the walk through the model")
    def _on_explain(self, request: PassRequest) -> None:
        lm = self.model
        if lm is None:
            self.explainFailed.emit("No model is loaded.")
            return
        with hold(lm):
            result = explain(lm.model, lm.tokenizer, list(request.ids), SamplerSettings(**request.settings))
        self.explained.emit(result)

    @Slot(str, str)
    @boundary("explainFailed", "comparing word orders")
    def _on_word_order(self, text: str, swapped: str) -> None:
        lm = self.model
        if lm is None:
            self.explainFailed.emit("No model is loaded.")
            return
        with hold(lm):
            compared = word_order_demo(lm.model, lm.tokenizer, text, swapped)
        self.wordOrderCompared.emit(compared)

    @Slot(object)
    @boundary("generationFailed", "the remote reply")
    def _on_remote_generate(self, request: RemoteGenerateRequest) -> None:
        """Stream a reply from ``request.base_url`` / ``request.model`` (the key is never stored by the
        worker), with the same signals and batching as a local reply. Logprobs (for the inspector) are
        asked for until a server refuses them (a 400); then, for this session, no more."""
        try:
            client = RemoteClient(request.base_url, request.api_key or None)
        except RemoteError as e:
            self.generationFailed.emit(str(e))
            return
        endpoint = (client.base_url, request.model)
        ask_logprobs = endpoint not in self.remote_without_logprobs
        try:
            gen = client.chat(
                request.model,
                [dict(m) for m in request.messages],
                SamplerSettings(**request.settings),
                max_tokens=request.max_tokens,
                stop_strings=request.stop,
                top_logprobs=TOP_LOGPROBS if ask_logprobs else None,
                logprobs_fallback=ask_logprobs,
                should_stop=self.cancel_flag,
            )
            # No local tokenizer counts a remote prompt: the server reports its count when it finishes.
            self.stream(gen, GenerationStarted(prompt_tokens=0, context_length=0, remote=True))
            if gen.logprobs_refused:
                self.remote_without_logprobs.add(endpoint)
        except RemoteError as e:  # what arrived before the failure was sent by `stream`
            where = normalise_base_url(request.base_url)
            message = str(e) if where in str(e) else f"{where}: {e}"
            self.generationFailed.emit(f"The remote model {request.model} failed. {message}")
            return
        finally:
            client.close()
        # Per token, for the inspector (bounded: MAX_KEPT_TOKENS).
        self.generationFinished.emit(generation_result(gen, gen.tokens))

    def stream(self, gen, started: GenerationStarted) -> None:
        """Announce ``started``, then send ``gen``'s tokens (local or remote) in batches of at most one per
        `BATCH_SECONDS`. What arrived before a failure is still sent, so the partial reply keeps it."""
        self.generationStarted.emit(started)
        batch: list[Token] = []
        last_emit = time.monotonic()
        try:
            for event in gen:
                batch.append(Token(event.id, event.text, event.logprob))
                if time.monotonic() - last_emit >= BATCH_SECONDS:
                    self.tokens.emit(tuple(batch))
                    batch, last_emit = [], time.monotonic()
        finally:
            if batch:
                self.tokens.emit(tuple(batch))

    @Slot(object)
    @boundary("generationFailed", "the reply")
    def _on_generate(self, request: GenerateRequest) -> None:
        lm = self.model
        if lm is None:
            self.generationFailed.emit("No model is loaded.")
            return
        prompt_ids = list(request.prompt_ids)
        gen = Generation(
            lm.model,
            lm.tokenizer,
            prompt_ids,
            SamplerSettings(**request.settings),
            max_tokens=request.max_tokens,
            stop_strings=request.stop,
            should_stop=self.cancel_flag,
            context_length=lm.context_length,
        )
        with hold(lm, self.cancel_flag) as held:  # the model may be serving a request: take turns
            if not held:  # stopped while it waited: an empty, stopped reply
                gen.finish_reason = "cancelled"
            else:
                self.stream(gen, GenerationStarted(prompt_tokens=len(prompt_ids), context_length=lm.context_length))
        self.generationFinished.emit(generation_result(gen))
