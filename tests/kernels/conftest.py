from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton kernels run natively on a GPU and in Triton's interpreter on the CPU. `@triton.jit` reads
# TRITON_INTERPRET when it decorates, and triton.language's own helpers (tl.sum, tl.max, ...) are decorated
# when triton is imported, so the variable must be set before the first `import triton` (setting it after
# works only for kernels that call none of those helpers). Hence here, at conftest import time.
_LATE = ""
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        _LATE = ("triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1, so its kernels "
                 "cannot run on this CPU-only machine; run pytest with TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"

from omni.kernels._triton import TRITON_AVAILABLE  # noqa: E402
from omni.kernels.cpu import Library, library  # noqa: E402


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
    if _LATE:
        pytest.fail(_LATE)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
