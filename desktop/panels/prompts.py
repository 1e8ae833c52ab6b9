"""Prompts: the system prompt (or the model's default, when the box is empty), saved prompt presets, the
"Think before answering" switch of reasoning models, and under "Advanced" a preview of the exact rendered
prompt.

Signals:
    systemPromptChanged(str)
    thinkChanged(bool)  -- the switch, passed to templates that take ``enable_thinking``
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.disk_full import not_saved_message
from desktop.presets import Presets
from engine.errors import EmberError

PROBE = "\x1fEmber probe\x1f"  # a system prompt no template writes by itself
THINK_TIPS = {
    True: "Reasoning models write their thoughts first (folded above the answer); off: they answer at once",
    False: "This model's chat template has no thinking switch (enable_thinking)",
    None: "The thinking switch needs a local model: its chat template decides",
}


def default_system_prompt(render: Callable[[list[dict[str, str]]], str]) -> str:
    """The system prompt a chat template writes when the conversation has none ("You are a helpful
    assistant…"), or "" when it writes none. ``render`` is the model's ``render_chat``.

    Rendered once with a probe system prompt and once without: what the second has where the first has
    the probe is the default."""
    user = {"role": "user", "content": "Hello"}
    try:
        with_probe = render([{"role": "system", "content": PROBE}, user])
        without = render([user])
    except EmberError:  # a template that refuses a system message has no default either
        return ""
    head, found, tail = with_probe.partition(PROBE)
    if not found or len(without) < len(head) + len(tail) or not (without.startswith(head) and without.endswith(tail)):
        return ""
    return without[len(head) : len(without) - len(tail)].strip()


class PromptsPanel(QWidget):
    systemPromptChanged = Signal(str)
    thinkChanged = Signal(bool)

    def __init__(self, presets: Presets, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.presets = presets
        self._updating = False
        self.model_default: str | None = None  # None: no local model to ask
        self.system = QPlainTextEdit(accessibleName="System prompt")
        self.system.setMaximumHeight(120)
        self.in_use = QLabel(wordWrap=True, accessibleName="System prompt in use", objectName="contextNote")
        self.in_use.setTextFormat(Qt.TextFormat.RichText)
        self.think = QCheckBox("Think before answering", accessibleName="Think before answering", checked=True)
        self.show_thinking_switch(None)
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
        self.advanced = QToolButton(
            text="Advanced: the exact prompt",
            checkable=True,
            accessibleName="Show the exact prompt",
            toolButtonStyle=Qt.ToolButtonStyle.ToolButtonTextBesideIcon,
            arrowType=Qt.ArrowType.RightArrow,
            autoRaise=True,
        )
        self.advanced_box = QWidget(visible=False)
        fold = QVBoxLayout(self.advanced_box)
        fold.setContentsMargins(0, 0, 0, 0)
        fold.addWidget(QLabel("The model's chat template applied to the conversation:", wordWrap=True))
        fold.addWidget(self.preview, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("System prompt"))
        layout.addWidget(self.system)
        layout.addWidget(self.in_use)
        layout.addLayout(row)
        layout.addLayout(manage)
        layout.addWidget(self.think)
        layout.addWidget(self.token_count)
        layout.addWidget(self.advanced)
        layout.addWidget(self.advanced_box, 1)
        layout.addStretch(1)  # holds the rest of the panel while the preview is folded
        self._fill()
        self._show_in_use()
        self.system.textChanged.connect(self._on_text)
        self.advanced.toggled.connect(self._on_advanced)
        self.think.toggled.connect(self.thinkChanged)
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
        self._show_in_use()

    def thinking(self) -> bool:
        return self.think.isChecked()

    def show_thinking_switch(self, takes: bool | None) -> None:
        """Whether the model's template takes the switch (`engine.text.thinking.takes_thinking_switch`);
        None when no local model answers. The switch is usable only where it does something."""
        self.think.setEnabled(bool(takes))
        self.think.setToolTip(THINK_TIPS[takes])

    def show_model_default(self, text: str | None) -> None:
        """The loaded model's default system prompt (`default_system_prompt`), "" when its template has
        none, None when no local model answers (the note is hidden)."""
        self.model_default = text
        self._show_in_use()

    def _show_in_use(self) -> None:
        """Say which system prompt the model gets: the box's, the model's default, or none."""
        if self.model_default:
            self.system.setPlaceholderText(
                f"Empty: the model's default is used. Write here to replace it:\n{self.model_default}"
            )
        else:
            self.system.setPlaceholderText("System prompt: how the assistant should behave (optional)")
        if self.system_prompt().strip() or self.model_default is None:
            self.in_use.hide()
            return
        if self.model_default:
            self.in_use.setText(f"Using the model's default: <i>{html.escape(self.model_default)}</i>")
        else:
            self.in_use.setText("No system prompt: the model gets only the conversation.")
        self.in_use.show()

    @Slot(bool)
    def _on_advanced(self, shown: bool) -> None:
        self.advanced.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.advanced_box.setVisible(shown)
        layout = self.layout()
        layout.setStretch(layout.count() - 1, 0 if shown else 1)

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
        self._show_in_use()
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
