"""Fixtures for the method matrix: tiny models (with and without biases) and eight examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_tiny_model


# Weights drawn with std 0.2 instead of 0.02: a near-silent random model gives near-uniform
# logits that small adapters can barely move in a few steps, so "loss falls" would test nothing.
INIT = 0.2


@pytest.fixture(scope="session")
def matrix_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("matrix-model"), initializer_range=INIT)


@pytest.fixture(scope="session")
def tiny_bias_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama with bias terms in attention and MLP (BitFit has something to train)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bias-model"), attention_bias=True,
                           mlp_bias=True, initializer_range=INIT)


@pytest.fixture
def model_dirs(matrix_model_dir, tiny_bias_model_dir) -> dict[str, Path]:
    return {"tiny": matrix_model_dir, "tiny_bias": tiny_bias_model_dir}
