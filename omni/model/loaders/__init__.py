"""Checkpoint loaders: Hugging Face directories (safetensors) and GGUF files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.model.errors import CheckpointError
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.tokenizer import TextTokenizer

__all__ = ["CheckpointError", "LoadedLM", "load_lm"]


@dataclass
class LoadedLM:
    """A decoder with its tokenizer, ready for sessions."""

    model: DecoderLM
    tokenizer: TextTokenizer
    source: str
    load_seconds: float


def load_lm(path: str | os.PathLike[str] | None = None, dtype: torch.dtype | None = None,
            device: str = "cpu", quant: str | None = None) -> LoadedLM:
    """Load a text LM from a checkpoint directory or a .gguf file; None means the embedded default.

    dtype: None takes the checkpoint's own dtype for directories. For GGUF files on CPU it means: Q4_0/Q4_1
    projections kept 4-bit as stored (decode on 2 cores is bound by the weight bytes read per token), the
    vocabulary scored by a bfloat16 copy of the head with its top candidates re-scored exactly, and the
    residual stream, attention and KV cache in float32 (a bfloat16 residual stream or head made
    SmolLM2-135M's greedy replies derail; float32 costs little at its size).
    Elsewhere it means bfloat16. An explicit dtype expands every GGUF weight to it (float32 for exact tests).
    quant: "int8" or "int4" quantises the projections weight-only after loading (omni/model/layers/quant_linear.py;
    for the GPU kernels, from a bf16/fp32 checkpoint), None keeps them as loaded.
    """
    from omni.model.embedded.packaged import default_model_path
    from omni.model.loaders.gguf_file import GGUFFile
    from omni.model.loaders.gguf_loader import load_gguf_decoder
    from omni.model.loaders.hf import load_hf_decoder

    start = time.perf_counter()
    p = Path(path) if path is not None else default_model_path()
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory (expected a checkpoint directory or a .gguf file)")
    if p.is_dir():
        model = load_hf_decoder(p, dtype=dtype, device=device)
        tokenizer = TextTokenizer.from_directory(p)
    elif p.suffix == ".gguf" or p.read_bytes()[:4] == b"GGUF":
        f = GGUFFile(p)
        tokenizer = TextTokenizer.from_gguf_metadata(f.metadata, str(p))
        if dtype is None and device == "cpu":  # 4-bit projections, float32 activations
            model = load_gguf_decoder(p, dtype=torch.float32, device=device, gguf=f, int4=True,
                                      embed_dtype=torch.bfloat16)
        else:
            model = load_gguf_decoder(p, dtype=dtype or torch.bfloat16, device=device, gguf=f)
    else:
        raise CheckpointError(f"{p}: not a checkpoint directory or a GGUF file")
    if quant is not None:
        from omni.model.layers.quant_linear import quantize_decoder

        quantize_decoder(model, quant)
    return LoadedLM(model=model, tokenizer=tokenizer, source=str(p), load_seconds=time.perf_counter() - start)
