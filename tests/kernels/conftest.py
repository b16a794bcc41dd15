from __future__ import annotations

import pytest

from kernels.cpu import Library, library


@pytest.fixture(scope="session")
def lib() -> Library:
    """The C kernels; tests that need them are skipped, saying why, where they cannot be built."""
    found = library()
    if found is None:
        pytest.skip("the C kernels could not be built here (no C compiler?); torch fallbacks are tested elsewhere")
    return found
