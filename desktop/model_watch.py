"""Noticing that the loaded model's file (or folder) was deleted or replaced on disk.

The weights live in memory once loaded (the GGUF reader copies each tensor out of its memory map and
closes it), so chatting goes on either way; what changes is that the model can no longer be loaded again
from that path, or that loading it again gives another model. The window says which.

Signals:
    changed(kind, path): kind is "deleted" (the file, the folder or one of its files is gone; a move
        counts) or "replaced" (the path now holds other bytes than the ones loaded), or "restored" (the
        loaded bytes are back at the path, e.g. an editor's save-as-same).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal, Slot

from desktop.engine_worker import fingerprint

SETTLE_MS = 300  # a copy arrives in many writes: look once they have stopped


class ModelFileWatch(QObject):
    changed = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._watcher = QFileSystemWatcher(self)
        self._watcher.fileChanged.connect(self._on_event)
        self._watcher.directoryChanged.connect(self._on_event)
        self._settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(self.check)
        self.path: Path | None = None
        self._fingerprint = ""
        self._files: list[Path] = []
        self.state = "ok"  # ok | deleted | replaced

    def watch(self, path: str | Path, loaded_fingerprint: str) -> None:
        """Watch ``path`` (a file or a model folder), which held ``loaded_fingerprint`` when loaded."""
        self.stop()
        self.path = Path(path)
        self._fingerprint = loaded_fingerprint
        self._files = sorted(p for p in self.path.iterdir() if p.is_file()) if self.path.is_dir() else [self.path]
        self.state = "ok"
        self._rewatch()

    def stop(self) -> None:
        self._settle.stop()
        paths = self._watcher.files() + self._watcher.directories()
        if paths:
            self._watcher.removePaths(paths)
        self.path = None

    def _rewatch(self) -> None:
        """Watch the path, its folder (a file replaced by a rename is a new file the watcher does not
        follow; the folder's change says it arrived) and, for a model folder, its files."""
        assert self.path is not None
        wanted = [self.path.parent, *self._files]
        if self.path.is_dir():
            wanted.append(self.path)
        current = set(self._watcher.files() + self._watcher.directories())
        missing = [str(p) for p in wanted if p.exists() and str(p) not in current]
        if missing:
            self._watcher.addPaths(missing)

    @Slot(str)
    def _on_event(self, _path: str) -> None:
        self._settle.start()

    @Slot()
    def check(self) -> None:
        """Look at the path now; emits ``changed`` when its state differs from the last one said."""
        if self.path is None:
            return
        if not all(f.is_file() for f in self._files):
            state = "deleted"
        else:
            try:
                state = "ok" if fingerprint(self.path) == self._fingerprint else "replaced"
            except OSError:  # removed while being read
                state = "deleted"
        self._rewatch()
        if state != self.state:
            self.state = state
            self.changed.emit("restored" if state == "ok" else state, str(self.path))
