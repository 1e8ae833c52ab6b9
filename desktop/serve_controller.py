"""Serving the loaded local model to other apps from the desktop: `engine.server.EmberServer` on
127.0.0.1, switched from the Model panel's `ServeBox`.

The server runs on its own threads (uvicorn's, and its model worker's) and shares the `LoadedModel`
with the engine worker; both hold the model's lock around every pass (`engine.model_lock`), so
requests from other apps queue behind the chat and the chat behind them. Loading another model
restarts the server on it, at the same port; switching it off and closing the window stop it.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Slot

from desktop.engine_worker import EngineWorker
from desktop.messages import ModelInfo
from desktop.panels.serve_box import ServeBox
from desktop.settings import Settings
from engine.server.ember_server import EmberServer

HOST = "127.0.0.1"  # never another address from the app: it would need an API key and a firewall thought


class LocalServer(QObject):
    """Serves ``worker``'s loaded model; ``settings`` keeps the port; ``show_status(text, ms)``: the status bar."""

    def __init__(
        self, box: ServeBox, *, worker: EngineWorker, settings: Settings, show_status: Callable[[str, int], None]
    ) -> None:
        super().__init__(box)
        self.box, self.worker, self.settings, self.show_status = box, worker, settings, show_status
        self.server: EmberServer | None = None
        box.serveRequested.connect(self._on_serve)
        # A bound slot of this UI-thread object: a lambda on a worker signal would run on the worker's thread.
        worker.loaded.connect(self._on_loaded)
        box.set_available(worker.model is not None)

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    @Slot(bool, int)
    def _on_serve(self, on: bool, port: int) -> None:
        if on:
            self.start(port)
        else:
            self.stop()
            self.box.show_stopped("Stopped: other apps can no longer use the model.")

    def start(self, port: int) -> bool:
        lm = self.worker.model
        if lm is None:
            self.box.show_stopped("Load a local model first.", error=True)
            return False
        try:
            server = EmberServer(lm, HOST, port)
        except OSError as e:
            self.box.show_stopped(f"Cannot listen on port {port}: {e.strerror or e}. Pick another port.", error=True)
            return False
        try:
            server.start()
        except RuntimeError as e:
            server.stop()
            self.box.show_stopped(f"The server did not start: {e}", error=True)
            return False
        self.server = server
        self.settings.set("server/port", port)
        self.box.show_serving(server.url, server.model_id)
        self.show_status(f"Serving {server.model_id} at {server.url}", 5000)
        return True

    def stop(self) -> None:
        """Stop the server (a request being answered is cancelled); the port is closed when this returns."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    @Slot(object)
    def _on_loaded(self, _info: ModelInfo) -> None:
        self.box.set_available(True)
        server = self.server
        if server is None or server.app.state.api.lm is self.worker.model:
            return
        port = server.port
        self.stop()
        if self.start(port):  # the same address, now answering with the new model
            self.show_status(f"Now serving {self.server.model_id} at {self.server.url}", 8000)
