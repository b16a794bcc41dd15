"""Fixtures shared by the model tests: tiny checkpoints built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qwen3_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-Omni checkpoint in the released layout (tests/model/qwen3_tiny.py): sharded float32
    safetensors with model.safetensors.index.json, per-expert MoE weights, tokenizer and preprocessor files."""
    from tests.model.qwen3_tiny import save_tiny_qwen3

    _, directory = save_tiny_qwen3(tmp_path_factory.mktemp("qwen3_tiny"))
    return directory
