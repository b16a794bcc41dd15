from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton kernels run natively on a GPU and in Triton's interpreter on the CPU. `@triton.jit` reads
# TRITON_INTERPRET when it decorates, so it is set here, before any test module imports a kernel module.
_TRITON_MODULES = ("kernels.rms_norm", "kernels.silu_gate", "kernels.rope", "kernels.decode_attention",
                   "kernels.int8_matmul", "kernels.int4_matmul")
if not torch.cuda.is_available():
    early = [m for m in _TRITON_MODULES if m in sys.modules]
    if early and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{early} were imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
                           "their kernels cannot run on this CPU-only machine (run with TRITON_INTERPRET=1)")
    os.environ["TRITON_INTERPRET"] = "1"

from kernels._triton import TRITON_AVAILABLE  # noqa: E402
from kernels.cpu import Library, library  # noqa: E402


@pytest.fixture(scope="session")
def lib() -> Library:
    """The C kernels; tests that need them are skipped, saying why, where they cannot be built."""
    found = library()
    if found is None:
        pytest.skip("the C kernels could not be built here (no C compiler?); torch fallbacks are tested elsewhere")
    return found


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the Triton kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    if not TRITON_AVAILABLE:
        pytest.skip("Triton is not installed (pip install 'omni[test]'); the dispatch uses the eager references")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
