"""Shared fixtures. AFFINA_HOME is left alone: the slow tests use the real converted cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_tiny_model


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with the tiny tokenizer, saved once per session. Treat as read-only."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
