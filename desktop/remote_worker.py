"""Listing a remote server's models off the UI thread (a reply from it streams on the engine worker:
`desktop.engine_worker.EngineWorker.generate_remote`).

`RemoteConnector` is a QObject moved to its own small QThread, so a "Connect" never waits behind a model
load or a reply on the engine thread.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.messages import ModelList
from desktop.ui_gc import worker_job
from engine.remote import RemoteClient, RemoteError, normalise_base_url


class RemoteConnector(QObject):
    """Its requests (queued to its thread) and what it answers; the payload types are in `desktop.messages`.

    Requests:
        requestModels(str base_url, str api_key) -- api_key "" for none

    Signals:
        listed(ModelList)  -- `desktop.messages.ModelList`: the server's address and its model ids
        failed(str base_url, str message)
    """

    requestModels = Signal(str, str)  # base URL, API key ("" = none)
    listed = Signal(object)
    failed = Signal(str, str)

    def __init__(self) -> None:
        super().__init__()
        self.requestModels.connect(self._on_models)

    @Slot(str, str)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
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
        self.listed.emit(ModelList(url, tuple(models)))


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
