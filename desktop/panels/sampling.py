"""Sampling settings: every sampler the engine offers, a seed, and named presets.

Signals:
    changed(dict) -- the settings as `SamplerSettings` keyword arguments, after any edit
    presetChosen(str) -- a preset was picked
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.disk_full import not_saved_message
from desktop.presets import Presets
from engine.generation.sampling import SamplerSettings

# field, label, low, high, step, decimals (0 = integer), tooltip
FIELDS = [
    (
        "temperature",
        "Temperature",
        0.0,
        5.0,
        0.05,
        2,
        "Flattens (>1) or sharpens (<1) the distribution. 0 always picks the most likely token.",
    ),
    ("top_k", "Top-k", 0, 1000, 1, 0, "Only the k most likely tokens can be picked. 0 turns it off."),
    (
        "top_p",
        "Top-p",
        0.01,
        1.0,
        0.01,
        2,
        "Only the most likely tokens whose probabilities add up to p can be picked. 1 turns it off.",
    ),
    ("min_p", "Min-p", 0.0, 1.0, 0.01, 2, "Drops tokens less likely than p times the most likely one. 0 turns it off."),
    (
        "typical_p",
        "Typical-p",
        0.01,
        1.0,
        0.01,
        2,
        "Keeps tokens whose surprise is close to the average (locally typical sampling). 1 turns it off.",
    ),
    (
        "repetition_penalty",
        "Repetition penalty",
        0.5,
        3.0,
        0.05,
        2,
        "Makes recently used tokens less likely (above 1) or more likely (below 1). 1 turns it off.",
    ),
    (
        "repetition_window",
        "Penalty window",
        0,
        8192,
        16,
        0,
        "How many recent tokens the penalties look at. 0 means the whole conversation.",
    ),
    (
        "presence_penalty",
        "Presence penalty",
        -2.0,
        2.0,
        0.1,
        2,
        "Subtracted once from every token already present: encourages new topics.",
    ),
    (
        "frequency_penalty",
        "Frequency penalty",
        -2.0,
        2.0,
        0.1,
        2,
        "Subtracted for every time a token already appeared: discourages repeating words.",
    ),
]


class SamplingPanel(QWidget):
    changed = Signal(dict)
    presetChosen = Signal(str)

    def __init__(self, presets: Presets, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.presets = presets
        self._updating = False
        self.preset_box = QComboBox(accessibleName="Sampling preset")
        self.preset_box.setToolTip("Built-in and saved sampling presets")
        save = QPushButton("Save as…", accessibleName="Save sampling preset")
        self.delete_button = QPushButton("Delete", accessibleName="Delete sampling preset")
        row = QHBoxLayout()
        row.addWidget(self.preset_box, 1)
        row.addWidget(save)
        row.addWidget(self.delete_button)

        form = QFormLayout()
        self.inputs: dict[str, QAbstractSpinBox] = {}
        for name, label, low, high, step, decimals, tip in FIELDS:
            box = QSpinBox() if decimals == 0 else QDoubleSpinBox(decimals=decimals)
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setToolTip(tip)
            box.setAccessibleName(label)
            box.valueChanged.connect(self._on_edit)
            self.inputs[name] = box
            form.addRow(label, box)
        self.random_seed = QCheckBox("Random seed", accessibleName="Random seed")
        self.random_seed.setToolTip("A new seed for every reply. Untick to fix one: the same seed gives the same text.")
        self.seed = QSpinBox(accessibleName="Seed")
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The random seed used when 'Random seed' is off")
        self.random_seed.toggled.connect(self.seed.setDisabled)
        self.random_seed.toggled.connect(self._on_edit)
        self.seed.valueChanged.connect(self._on_edit)
        form.addRow(self.random_seed, self.seed)

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(form)
        layout.addStretch(1)

        self._fill_presets()
        self.preset_box.currentTextChanged.connect(self._on_preset)
        save.clicked.connect(self._on_save)
        self.delete_button.clicked.connect(self._on_delete)
        self.random_seed.setChecked(True)

    def _fill_presets(self, select: str | None = None) -> None:
        self._updating = True
        self.preset_box.clear()
        self.preset_box.addItems(self.presets.names())
        if select:
            self.preset_box.setCurrentText(select)
        self.delete_button.setEnabled(not self.presets.is_builtin(self.preset_box.currentText()))
        self._updating = False

    def settings(self) -> dict[str, Any]:
        values = {name: box.value() for name, box in self.inputs.items()}
        values["seed"] = None if self.random_seed.isChecked() else self.seed.value()
        SamplerSettings(**values)  # validates
        return values

    def set_settings(self, values: dict[str, Any]) -> None:
        """Show ``values`` (missing fields take the engine's defaults). Emits nothing: showing a
        conversation's settings is no edit."""
        merged = {**vars(SamplerSettings()), **{k: v for k, v in values.items() if k in vars(SamplerSettings())}}
        self._updating = True
        for name, box in self.inputs.items():
            box.setValue(merged[name])
        self.random_seed.setChecked(merged["seed"] is None)
        if merged["seed"] is not None:
            self.seed.setValue(merged["seed"])
        self._updating = False

    @Slot()
    def _on_edit(self, *_args) -> None:
        if not self._updating:
            self.changed.emit(self.settings())

    @Slot(str)
    def _on_preset(self, name: str) -> None:
        if self._updating or not name:
            return
        self.delete_button.setEnabled(not self.presets.is_builtin(name))
        seed = None if self.random_seed.isChecked() else self.seed.value()
        self.set_settings({**self.presets.get(name), "seed": seed})
        self.changed.emit(self.settings())
        self.presetChosen.emit(name)

    @Slot()
    def _on_save(self) -> None:
        name, ok = QInputDialog.getText(self, "Save sampling preset", "Preset name:")
        name = name.strip()
        if ok and name:
            values = self.settings()
            values.pop("seed")
            try:
                self.presets.save(name, values)
            except OSError as exc:  # a full disk: the presets on disk and here are as they were
                where = self.presets.user_file.parent
                QMessageBox.warning(self, "Preset not saved", not_saved_message(f"the preset “{name}”", exc, where))
                return
            self._fill_presets(select=name)

    @Slot()
    def _on_delete(self) -> None:
        name = self.preset_box.currentText()
        if self.presets.is_builtin(name):
            return
        if (
            QMessageBox.question(self, "Delete preset", f"Delete the preset “{name}”?")
            == QMessageBox.StandardButton.Yes
        ):
            try:
                self.presets.delete(name)
            except OSError as exc:
                where = self.presets.user_file.parent
                QMessageBox.warning(self, "Preset not deleted", not_saved_message("the deletion", exc, where))
                return
            self._fill_presets()
