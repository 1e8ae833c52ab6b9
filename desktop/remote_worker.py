"""Remote models off the UI thread: listing a server's models, and streaming a reply from it.

`RemoteConnector` is a QObject moved to its own small QThread (so a "Connect" never waits behind a model
load or a reply on the engine thread) that asks a server for its models. `remote_generate` runs on the
engine worker's thread (`EngineWorker.requestRemoteGenerate`) and answers with the worker's own
generation signals, batched the same way, so the main window treats a remote reply like a local one.
It asks for logprobs (5 alternatives a token) unless the server refused them before; the reply's
per-token data comes back in ``generationFinished``'s ``logprobs`` for the inspector.

Signals of `RemoteConnector`:
    listed(str base_url, list model_ids)
    failed(str base_url, str message)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.generation.sampling import SamplerSettings
from engine.remote import RemoteClient, RemoteError, normalise_base_url

if TYPE_CHECKING:
    from desktop.engine_worker import EngineWorker

TOP_LOGPROBS = 5  # alternatives per token asked of a server, for the inspector


class RemoteConnector(QObject):
    requestModels = Signal(str, str)  # base URL, API key ("" = none)
    listed = Signal(str, list)
    failed = Signal(str, str)

    def __init__(self) -> None:
        super().__init__()
        self.requestModels.connect(self._on_models)

    @Slot(str, str)
    def _on_models(self, base_url: str, api_key: str) -> None:
        try:
            url = normalise_base_url(base_url)
            with RemoteClient(url, api_key or None) as client:
                models = client.models()
        except RemoteError as e:
            self.failed.emit(base_url, str(e))
            return
        except Exception as e:  # an address httpx cannot parse, say: a message, never a dead thread
            self.failed.emit(base_url, f"{type(e).__name__}: {e}")
            return
        if not models:
            self.failed.emit(base_url, f"{url} lists no models.")
            return
        self.listed.emit(url, models)


class ConnectorThread:
    """A `RemoteConnector` on its own QThread; `stop` before the owner goes away."""

    def __init__(self, parent: QObject) -> None:
        self.thread = QThread(parent)
        self.thread.setObjectName("remote-connect")
        self.connector = RemoteConnector()
        self.connector.moveToThread(self.thread)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.isRunning():
            self.thread.quit()
            self.thread.wait(15_000)  # a listing in flight ends within the connect/read timeouts


def remote_generate(worker: EngineWorker, messages: list, settings: dict, options: dict) -> None:
    """Stream a reply from ``options["base_url"]`` / ``options["model"]`` (the key in ``options["api_key"]``,
    never stored by the worker), emitting ``worker``'s generation signals."""
    try:
        client = RemoteClient(options["base_url"], options.get("api_key") or None)
    except RemoteError as e:
        worker.generationFailed.emit(str(e))
        return
    # Logprobs are asked for until a server refuses them (a 400); then, for this session, no more.
    endpoint = (client.base_url, options["model"])
    ask_logprobs = endpoint not in worker.remote_without_logprobs
    try:
        gen = client.chat(
            options["model"],
            messages,
            SamplerSettings(**settings),
            max_tokens=options.get("max_tokens", 512),
            stop_strings=options.get("stop", ()),
            top_logprobs=TOP_LOGPROBS if ask_logprobs else None,
            logprobs_fallback=ask_logprobs,
            should_stop=worker.cancel_flag,
        )
        # No local tokenizer counts a remote prompt: the server reports its count when it finishes.
        worker.stream(gen, {"prompt_tokens": 0, "context_length": 0, "remote": True})
        if gen.logprobs_refused:
            worker.remote_without_logprobs.add(endpoint)
    except RemoteError as e:  # what arrived before the failure was sent by `stream`
        where = normalise_base_url(options["base_url"])
        message = str(e) if where in str(e) else f"{where}: {e}"
        worker.generationFailed.emit(f"The remote model {options['model']} failed. {message}")
        return
    finally:
        client.close()
    s = gen.stats
    worker.generationFinished.emit(
        {
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": s.prompt_tokens,
            "generated_tokens": s.generated_tokens,
            "prefill_tps": s.prefill_tokens_per_second,
            "decode_tps": s.decode_tokens_per_second,
            "seed": gen.seed,
            "logprobs": gen.tokens or None,  # per token, for the inspector (bounded: MAX_KEPT_TOKENS)
        }
    )
