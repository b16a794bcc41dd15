"""Vectorised torch dequantisation of the ggml block formats that GGUF files in the wild use.

gguf.quants.dequantize works in numpy over groups of rows and takes ~1.6 s for SmolLM2-135M on 2 cores;
these whole-tensor versions take a fraction of that. Every other type goes through gguf's implementation.
Legacy layouts (ggml-common.h): 32 weights per block;
  Q8_0: f16 scale d, 32 x int8 q            -> d * q
  Q4_0: f16 scale d, 16 bytes of nibbles     -> d * (q - 8)
  Q4_1: f16 scale d, f16 min m, 16 bytes     -> d * q + m
with the low nibbles holding weights 0..15 of the block and the high nibbles weights 16..31.
K-quants: super-blocks of 256 weights in 8 sub-blocks of 32 (Q4_K, Q5_K) or 16 of 16 (Q6_K);
  Q4_K (144 B): f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs, 128 bytes of nibbles
                -> d * sc_j * q - dmin * m_j for sub-block j;
  Q5_K (176 B): as Q4_K plus 32 bytes holding each weight's fifth bit (qh) before the nibbles;
  Q6_K (210 B): 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16 d
                -> d * sc_j * (q - 32).
In Q4_K/Q5_K each 64-weight group takes the low nibbles of 32 bytes for its first sub-block and the high
nibbles of the same bytes for its second. These files are what Q4_K_M / Q5_K_M mixes are made of.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

QK = 32
QK_K = 256
_BLOCK_BYTES = {GGMLQuantizationType.Q8_0: 34, GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}
_K_BLOCK_BYTES = {GGMLQuantizationType.Q4_K: 144, GGMLQuantizationType.Q5_K: 176, GGMLQuantizationType.Q6_K: 210}
FAST_TYPES = frozenset(_BLOCK_BYTES) | frozenset(_K_BLOCK_BYTES)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[N, 16] uint8 -> [N, 32] int16: low nibbles first, then high nibbles."""
    q = qs.to(torch.int16)
    return torch.cat([q & 0x0F, q >> 4], dim=1)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[N, 2] uint8 -> [N, 1] float32."""
    return b.contiguous().view(torch.float16).float()


def _k_scales_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes [N, 12] -> 6-bit scales and mins [N, 8] for the 8 sub-blocks.

    Sub-blocks 0-3 keep their scale and min in the low 6 bits of bytes 0-3 and 4-7; sub-blocks 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the spare top bits of 0-7.
    """
    s = s.to(torch.int16)
    lo_sc, lo_m = s[:, 0:4] & 63, s[:, 4:8] & 63
    hi_sc = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], dim=1).float(), torch.cat([lo_m, hi_m], dim=1).float()


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[N, 128] uint8 -> [N, 8, 32] int16: per 64-weight group, low nibbles of its 32 bytes then high nibbles."""
    q = qs.to(torch.int16).view(-1, 4, 1, 32)
    return torch.cat([q & 0x0F, q >> 4], dim=2).view(-1, 8, 32)


def _dequantize_k(blocks: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """[N, block bytes] uint8 super-blocks -> [N, 256] float32."""
    if qtype == GGMLQuantizationType.Q6_K:
        ql, qh = blocks[:, :128].to(torch.int16), blocks[:, 128:192].to(torch.int16)
        sc = blocks[:, 192:208].contiguous().view(torch.int8).float()  # [N, 16], one per 16 weights
        d = _f16(blocks[:, 208:210])
        # Each 128-weight half: 64 bytes of ql and 32 of qh give four runs of 32 weights.
        ql, qh = ql.view(-1, 2, 2, 32), qh.view(-1, 2, 1, 32)
        low = torch.cat([ql & 0x0F, ql >> 4], dim=2)  # [N, 2, 4, 32]: runs (ql[0:32] lo, ql[32:64] lo, hi, hi)
        high = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2)  # [N, 2, 4, 32]
        q = (low | (high << 4)) - 32
        return (d * sc.repeat_interleave(16, dim=1) * q.reshape(-1, QK_K).float()).reshape(-1, QK_K)
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k_scales_mins(blocks[:, 4:16])
    if qtype == GGMLQuantizationType.Q4_K:
        q = _k_nibbles(blocks[:, 16:144])
    else:  # Q5_K: bit 2j of qh[l] is the fifth bit of weight l of sub-block 2j, bit 2j+1 of sub-block 2j+1
        qh = blocks[:, 16:48].to(torch.int16)[:, None, :]  # [N, 1, 32]
        fifth = (qh >> torch.arange(8, dtype=torch.int16)[None, :, None]) & 1  # [N, 8, 32]
        q = _k_nibbles(blocks[:, 48:176]) | (fifth << 4)
    out = (d * sc)[..., None] * q.float() - (dmin * m)[..., None]  # [N, 8, 32]
    return out.reshape(-1, QK_K)


def dequantize_blocks(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw block bytes of one tensor -> float32 tensor of `shape`."""
    if qtype in _K_BLOCK_BYTES:
        blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).view(-1, _K_BLOCK_BYTES[qtype])
        return _dequantize_k(blocks, qtype).reshape(shape)
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
    """Q4_0/Q4_1 blocks of an [N, K] tensor -> Q4_1 blocks [N, K/32 * 20] uint8 (omni/kernels/q4_matmul.py).

    Q4_1 bytes are taken as they are; a Q4_0 block (d, 16 bytes) gains the min m = -8 d, exact in f16.
    """
    N, K = shape
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).view(-1, _BLOCK_BYTES[qtype])
    if qtype == GGMLQuantizationType.Q4_0:
        m = (-8 * blocks[:, :2].contiguous().view(torch.float16)).view(torch.uint8)
        blocks = torch.cat([blocks[:, :2], m, blocks[:, 2:]], dim=1)
    return blocks.reshape(N, K // QK * 20)
