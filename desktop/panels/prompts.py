"""Prompts: the system prompt, saved prompt presets, and a preview of the exact rendered prompt.

Signals:
    systemPromptChanged(str)
"""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.disk_full import not_saved_message
from desktop.presets import Presets


class PromptsPanel(QWidget):
    systemPromptChanged = Signal(str)

    def __init__(self, presets: Presets, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.presets = presets
        self._updating = False
        self.system = QPlainTextEdit(accessibleName="System prompt")
        self.system.setPlaceholderText("System prompt: how the assistant should behave (optional)")
        self.system.setMaximumHeight(120)
        self.preset_box = QComboBox(accessibleName="Prompt preset")
        self.preset_box.setToolTip("Pick a saved system prompt")
        self.preset_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset_box.setMinimumContentsLength(10)
        use = QPushButton("Use", accessibleName="Use prompt preset")
        save = QPushButton("Save as…", accessibleName="Save prompt preset")
        self.delete_button = QPushButton("Delete", accessibleName="Delete prompt preset")
        row = QHBoxLayout()
        row.addWidget(self.preset_box, 1)
        row.addWidget(use)
        manage = QHBoxLayout()
        manage.addStretch(1)
        manage.addWidget(save)
        manage.addWidget(self.delete_button)
        self.preview = QPlainTextEdit(readOnly=True, accessibleName="Rendered prompt preview")
        self.preview.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.preview.setToolTip("The exact text the model receives: its chat template applied to the conversation")
        self.token_count = QLabel(accessibleName="Prompt token count")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("System prompt"))
        layout.addWidget(self.system)
        layout.addLayout(row)
        layout.addLayout(manage)
        layout.addWidget(QLabel("Prompt preview (the model's chat template applied)", wordWrap=True))
        layout.addWidget(self.preview, 1)
        layout.addWidget(self.token_count)
        self._fill()
        self.system.textChanged.connect(self._on_text)
        use.clicked.connect(self._on_use)
        save.clicked.connect(self._on_save)
        self.delete_button.clicked.connect(self._on_delete)
        self.preset_box.currentTextChanged.connect(self._on_preset)

    def _fill(self, select: str | None = None) -> None:
        self.preset_box.clear()
        self.preset_box.addItems(self.presets.names())
        if select:
            self.preset_box.setCurrentText(select)
        self._on_preset(self.preset_box.currentText())

    @Slot(str)
    def _on_preset(self, name: str) -> None:
        self.delete_button.setEnabled(bool(name) and not self.presets.is_builtin(name))

    def system_prompt(self) -> str:
        return self.system.toPlainText()

    def set_system_prompt(self, text: str) -> None:
        self._updating = True
        self.system.setPlainText(text)
        self._updating = False

    @Slot(str, int, int)
    def show_preview(self, text: str, n_tokens: int, context: int) -> None:
        self.preview.setPlainText(text)
        self.token_count.setText(f"{n_tokens:,} tokens of {context:,} in the context")

    def show_unavailable(self, reason: str) -> None:
        """No preview (a remote model: its template and tokenizer are on the server)."""
        self.preview.setPlainText(reason)
        self.token_count.setText("Token count: needs a local model")

    @Slot()
    def _on_text(self) -> None:
        if not self._updating:
            self.systemPromptChanged.emit(self.system_prompt())

    @Slot()
    def _on_use(self) -> None:
        name = self.preset_box.currentText()
        if name:
            self.system.setPlainText(self.presets.get(name))

    @Slot()
    def _on_save(self) -> None:
        name, ok = QInputDialog.getText(self, "Save prompt preset", "Preset name:")
        if ok and name.strip():
            try:
                self.presets.save(name.strip(), self.system_prompt())
            except OSError as exc:  # a full disk: the presets on disk and here are as they were
                what = f"the prompt preset “{name.strip()}”"
                QMessageBox.warning(
                    self, "Preset not saved", not_saved_message(what, exc, self.presets.user_file.parent)
                )
                return
            self._fill(select=name.strip())

    @Slot()
    def _on_delete(self) -> None:
        name = self.preset_box.currentText()
        if (
            name
            and not self.presets.is_builtin(name)
            and QMessageBox.question(self, "Delete preset", f"Delete the prompt preset “{name}”?")
            == QMessageBox.StandardButton.Yes
        ):
            try:
                self.presets.delete(name)
            except OSError as exc:
                where = self.presets.user_file.parent
                QMessageBox.warning(self, "Preset not deleted", not_saved_message("the deletion", exc, where))
                return
            self._fill()
