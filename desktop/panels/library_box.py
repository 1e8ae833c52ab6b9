"""The Model panel's "Your models" box: the models other apps keep on this computer (LM Studio, Ollama, the
Hugging Face cache, GPT4All) and in folders the user added, one row each with its family, size on disk,
quantization and context, and whether Ember opens it (if not, why). Widgets only: the scan runs on its own
thread (`desktop.library_worker`, asked by `desktop.library_controller`).

Signals:
    openRequested(str path)      -- a row opened (double-click, Enter or Open) that Ember can open
    addFolderRequested(str path) -- a folder chosen with "Add folder…"
    rescanRequested()
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.messages import FoundModels
from engine.loading.model_library import LibraryModel

COLUMNS = ("Name", "Family", "Size", "Quantization", "Context", "From", "Opens")
PATH_ROLE = Qt.ItemDataRole.UserRole


def size_text(size: int) -> str:
    """1.2 GB, 350 MB, 12 KB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if scale == 1e9 else f"{size / scale:.0f} {unit}"
    return f"{size} B"


class LibraryBox(QWidget):
    openRequested = Signal(str)
    addFolderRequested = Signal(str)
    rescanRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models: dict[str, LibraryModel] = {}  # by path
        self.tree = QTreeWidget(accessibleName="Your models")
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setMinimumHeight(120)
        self.tree.setToolTip("Double-click or press Enter to open")
        self.add_folder = QPushButton("Add folder…", accessibleName="Add a folder of models")
        self.rescan = QPushButton("Rescan", accessibleName="Look for models again")
        self.open = QPushButton("Open", accessibleName="Open the selected model")
        self.open.setEnabled(False)
        self.status = QLabel(wordWrap=True, accessibleName="Your models status")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        for button in (self.add_folder, self.rescan):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.open)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        title = QLabel("<b>Your models</b> (from LM Studio, Ollama, Hugging Face, GPT4All and your folders)")
        title.setWordWrap(True)
        layout.addWidget(title)
        layout.addWidget(self.tree)
        layout.addLayout(buttons)
        layout.addWidget(self.status)

        self.tree.itemActivated.connect(lambda item: self._open(item))
        self.tree.currentItemChanged.connect(self._on_current_changed)
        self.open.clicked.connect(lambda: self._open(self.tree.currentItem()))
        self.add_folder.clicked.connect(self._on_add_folder)
        self.rescan.clicked.connect(self.rescanRequested)

    def show_scanning(self) -> None:
        self.status.setText("Looking for models…")
        self.rescan.setEnabled(False)

    @Slot(object)
    def show_models(self, found: FoundModels) -> None:
        self.rescan.setEnabled(True)
        self.models = {str(m.path): m for m in found.models}
        self.tree.clear()
        for model in found.models:  # in the order found: by app, then by path
            self.tree.addTopLevelItem(self._row(model))
        for column in range(len(COLUMNS) - 1):
            self.tree.resizeColumnToContents(column)
        openable = sum(m.openable for m in found.models)
        text = f"{len(found.models)} models found, {openable} open in Ember."
        self.status.setText(text + (" The scan was stopped." if found.stopped else ""))

    @Slot(str)
    def show_failed(self, message: str) -> None:
        self.rescan.setEnabled(True)
        self.status.setText(f"<span style='color:#c0392b'>Could not look for models: {html.escape(message)}</span>")

    def _row(self, model: LibraryModel) -> QTreeWidgetItem:
        context = f"{model.context_length:,}" if model.context_length else ""
        opens = "Yes" if model.openable else f"No: {model.problem}"
        cells = (model.name, model.family, size_text(model.size_bytes), model.quantization, context, model.app, opens)
        item = QTreeWidgetItem(list(cells))
        item.setData(0, PATH_ROLE, str(model.path))
        for column in range(len(COLUMNS)):
            item.setToolTip(column, f"{model.path}\n{opens}")
            if not model.openable:
                item.setForeground(column, QBrush(self.palette().color(QPalette.ColorRole.PlaceholderText)))
        return item

    def selected_model(self) -> LibraryModel | None:
        item = self.tree.currentItem()
        return self.models.get(item.data(0, PATH_ROLE)) if item is not None else None

    @Slot(QTreeWidgetItem, QTreeWidgetItem)
    def _on_current_changed(self, current: QTreeWidgetItem | None, _previous) -> None:
        model = self.models.get(current.data(0, PATH_ROLE)) if current is not None else None
        self.open.setEnabled(model is not None and model.openable)

    def _open(self, item: QTreeWidgetItem | None) -> None:
        model = self.models.get(item.data(0, PATH_ROLE)) if item is not None else None
        if model is None:
            return
        if not model.openable:
            self.status.setText(f"Ember cannot open {html.escape(model.name)}: {html.escape(model.problem)}")
            return
        self.openRequested.emit(str(model.path))

    @Slot()
    def _on_add_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a folder of models")
        if path:
            self.addFolderRequested.emit(path)
