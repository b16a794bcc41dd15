"""Vectorised torch dequantisation of the common legacy ggml block formats (Q8_0, Q4_0, Q4_1).

gguf.quants.dequantize works in numpy over groups of rows and takes ~1.6 s for SmolLM2-135M on 2 cores;
these whole-tensor versions take a fraction of that. Every other type goes through gguf's implementation.
Layouts (ggml-common.h): 32 weights per block;
  Q8_0: f16 scale d, 32 x int8 q            -> d * q
  Q4_0: f16 scale d, 16 bytes of nibbles     -> d * (q - 8)
  Q4_1: f16 scale d, f16 min m, 16 bytes     -> d * q + m
with the low nibbles holding weights 0..15 of the block and the high nibbles weights 16..31.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

QK = 32
_BLOCK_BYTES = {GGMLQuantizationType.Q8_0: 34, GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}
FAST_TYPES = frozenset(_BLOCK_BYTES)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[N, 16] uint8 -> [N, 32] int16: low nibbles first, then high nibbles."""
    q = qs.to(torch.int16)
    return torch.cat([q & 0x0F, q >> 4], dim=1)


def dequantize_blocks(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw block bytes of one tensor -> float32 tensor of `shape`."""
    size = _BLOCK_BYTES[qtype]
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).view(-1, size)  # [N, size]
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # [N, 1]
    if qtype == GGMLQuantizationType.Q8_0:
        out = d * blocks[:, 2:].contiguous().view(torch.int8).float()
    elif qtype == GGMLQuantizationType.Q4_0:
        out = d * (_nibbles(blocks[:, 2:]) - 8).float()
    else:
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        out = torch.addcmul(m, d, _nibbles(blocks[:, 4:]).float())
    return out.reshape(shape)


Q4_TYPES = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1})


def q4_1_blocks(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> torch.Tensor:
    """Q4_0/Q4_1 blocks of an [N, K] tensor -> Q4_1 blocks [N, K/32 * 20] uint8 (kernels/q4_matmul.py).

    Q4_1 bytes are taken as they are; a Q4_0 block (d, 16 bytes) gains the min m = -8 d, exact in f16.
    """
    N, K = shape
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).view(-1, _BLOCK_BYTES[qtype])
    if qtype == GGMLQuantizationType.Q4_0:
        m = (-8 * blocks[:, :2].contiguous().view(torch.float16)).view(torch.uint8)
        blocks = torch.cat([blocks[:, :2], m, blocks[:, 2:]], dim=1)
    return blocks.reshape(N, K // QK * 20)
