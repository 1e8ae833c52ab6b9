"""The Prompts panel says which system prompt the model gets (the model's default when the box is empty)
and keeps the exact rendered prompt folded under "Advanced" until asked for."""

from __future__ import annotations

import pytest

from desktop.panels.prompts import PromptsPanel, default_system_prompt
from desktop.presets import Presets, resources_dir
from engine.errors import TemplateError

pytestmark = pytest.mark.gui
SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture
def panel(qtbot, tmp_path) -> PromptsPanel:
    p = PromptsPanel(Presets(resources_dir() / "presets" / "prompts.json", tmp_path))
    qtbot.addWidget(p)
    p.resize(440, 700)
    p.show()
    qtbot.waitExposed(p)
    return p


def test_the_default_models_template_has_a_default_system_prompt(default_model):
    assert default_system_prompt(default_model.render_chat) == SMOLLM_DEFAULT


def test_templates_without_a_default():
    def chatml(messages):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def refuses_system(messages):
        if messages[0]["role"] == "system":
            raise TemplateError("The chat template rejected this conversation: System role not supported")
        return chatml(messages)

    assert default_system_prompt(chatml) == ""
    assert default_system_prompt(refuses_system) == ""


def test_an_empty_box_shows_the_models_default_in_use(panel, default_model):
    panel.set_system_prompt("")
    panel.show_model_default(default_system_prompt(default_model.render_chat))
    assert panel.in_use.isVisible()
    assert panel.in_use.text().startswith("Using the model's default:") and SMOLLM_DEFAULT in panel.in_use.text()
    assert SMOLLM_DEFAULT in panel.system.placeholderText()

    panel.system.setPlainText("Be kind.")  # the user's own prompt replaces the default
    assert not panel.in_use.isVisible()
    panel.system.setPlainText("")
    assert panel.in_use.isVisible()

    panel.show_model_default("")  # a template without a default
    assert panel.in_use.isVisible() and "No system prompt" in panel.in_use.text()
    assert SMOLLM_DEFAULT not in panel.system.placeholderText()
    panel.show_model_default(None)  # no local model: nothing to say
    assert not panel.in_use.isVisible()


def test_the_raw_template_is_folded_under_advanced(qtbot, panel):
    panel.show_preview("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>assistant\n", 12, 8192)
    assert not panel.preview.isVisible() and not panel.advanced.isChecked()
    assert panel.token_count.isVisible() and panel.token_count.text() == "12 tokens of 8,192 in the context"
    folded = panel.advanced.geometry().bottom()
    assert folded < panel.height() / 2  # the folded panel ends near its top: no empty template box
    panel.advanced.click()
    assert panel.preview.isVisible() and panel.preview.toPlainText().startswith("<|im_start|>system")
    qtbot.waitUntil(lambda: panel.preview.height() > panel.height() / 3)  # it takes the room when open
    panel.advanced.click()
    assert not panel.preview.isVisible()
