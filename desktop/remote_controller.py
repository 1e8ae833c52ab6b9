"""Which model answers: the local one on the engine worker, or a remote OpenAI-compatible server.

`RemoteModels` ties the Model panel's remote box to the connector thread, the key store and the
settings. ``active`` is ``{"base_url", "model"}`` while a remote model is in use, else None. API keys go
to `engine.remote.KeyStore` under the config folder, never to settings.ini, the database or exports:
settings.ini keeps only recent (address, model) pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from desktop.messages import RemoteGenerateRequest, frozen_map
from desktop.panels.remote_endpoint import MAX_RECENT, RemoteEndpointBox
from desktop.prompt_fit import Fit
from desktop.remote_worker import ConnectorThread
from desktop.settings import Settings
from engine.remote import KeyStore, RemoteError, normalise_base_url

NEEDS_LOCAL = "needs a local model: a remote server sends text, not its weights or its tokenizer."
PREVIEW_NEEDS_LOCAL = (
    "A remote model is in use: the conversation is sent to the server as a list of messages, and the "
    "server applies its own chat template and context limit.\n\n"
    f"The rendered prompt preview and its token count {NEEDS_LOCAL} Go back to a local model in the Model "
    "panel to see them."
)


@dataclass(frozen=True)
class RemoteFit(Fit):
    """What `ChatSession._ready` returns for a remote model: the messages, sent as they are."""

    messages: tuple = ()


class RemoteModels(QObject):
    """``config_dir``: where the key store is; ``chatting()``: a reply is being written (no switching then);
    ``local_name()``: the loaded local model's name, if any; ``show_status(text, ms)``: the status bar.

    Signals:
        switched()  -- a remote model is in use now, or the local one again
    """

    switched = Signal()

    def __init__(
        self,
        box: RemoteEndpointBox,
        *,
        settings: Settings,
        config_dir: Path,
        chatting: Callable[[], bool],
        local_name: Callable[[], str | None],
        show_status: Callable[[str, int], None],
    ) -> None:
        super().__init__(box)
        self.box, self.settings = box, settings
        self._chatting, self._local_name, self._show_status = chatting, local_name, show_status
        self.active: dict[str, str] | None = None
        self.keys = KeyStore(config_dir)
        self._connector = ConnectorThread(self)
        c = self._connector.connector
        box.connectRequested.connect(c.requestModels)
        # Bound slots of UI-thread objects only: a lambda would run on the connector's thread.
        c.listed.connect(box.on_listed)
        c.failed.connect(box.on_failed)
        box.useRequested.connect(self._on_use)
        box.recentRequested.connect(self._on_recent)
        box.localRequested.connect(self.use_local)
        box.set_recent(self._read_recent())

    # Settings: recent (address, model) pairs as JSON, no keys

    def _read_recent(self) -> list[tuple[str, str]]:
        try:
            entries = json.loads(self.settings.get("remote/recent") or "[]")
        except ValueError:
            return []
        return [
            (e[0], e[1]) for e in entries if isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
        ][:MAX_RECENT]

    def _remember(self, base_url: str, model: str) -> None:
        entries = [(base_url, model)] + [e for e in self.box.recent_entries() if e != (base_url, model)]
        self.box.set_recent(entries[:MAX_RECENT])
        self.settings.set("remote/recent", json.dumps([list(e) for e in entries[:MAX_RECENT]]))

    # Switching

    def api_key(self) -> str:
        return (self.keys.get(self.active["base_url"]) if self.active else None) or ""

    def request(self, messages: tuple, settings: dict, max_tokens: int) -> RemoteGenerateRequest:
        """The worker's request for a reply from the model in use (the key travels in memory only)."""
        assert self.active is not None
        return RemoteGenerateRequest(
            messages=tuple(frozen_map(m) for m in messages),
            settings=frozen_map(settings),
            base_url=self.active["base_url"],
            model=self.active["model"],
            api_key=self.api_key(),
            max_tokens=max_tokens,
        )

    def _busy(self) -> bool:
        """A reply is being written: the model cannot change now (said in the status bar)."""
        if self._chatting():
            self._show_status("Wait for the reply to finish (or stop it) before switching models.", 5000)
        return self._chatting()

    @Slot(str, str, str)
    def _on_use(self, base_url: str, model: str, api_key: str) -> None:
        if self._busy():
            return
        try:
            base_url = normalise_base_url(base_url)
            self.keys.set(base_url, api_key.strip() or None)
        except (RemoteError, OSError) as e:
            self.box.on_failed(base_url, f"Could not store the API key: {e}")
            return
        self._activate(base_url, model)

    @Slot(str, str)
    def _on_recent(self, base_url: str, model: str) -> None:
        if self._busy():
            return
        self.box.key.setText(self.keys.get(base_url) or "")
        self._activate(base_url, model)

    def _activate(self, base_url: str, model: str) -> None:
        self.active = {"base_url": base_url, "model": model}
        self._remember(base_url, model)
        self.box.show_active(base_url, model)
        self._show_status(f"Replies now come from {model} at {base_url}", 5000)
        self.switched.emit()

    @Slot()
    def use_local(self) -> None:
        """Back to the local model (a local load request also calls this)."""
        if self.active is None or self._busy():
            return
        self.active = None
        self.box.show_inactive(self._local_name())
        self.switched.emit()

    def stop(self) -> None:
        self._connector.stop()
