"""Shared test set-up: deterministic torch on CPU, no network, tiny checkpoints made at test time."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Triton kernels run in Triton's interpreter on a CPU-only machine. The variable must be set before the first
# `import triton` (tests/kernels/conftest.py says why), and production modules that the other tests import
# (omni.model.lm.decode_kernels -> omni_kernels.*) import triton early; hence here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
