"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest

from tests.engine.tiny_models import make_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """arch -> (folder, HF reference model), built once per session."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            folder = tmp_path_factory.mktemp(arch)
            cache[arch] = (folder, make_tiny_model(arch, folder))
        return cache[arch]

    return get
