"""Weight-only 4-bit linear layers for CPU: groups of 32 weights with a scale and a zero point each.

GGUF's Q4_0 and Q4_1 blocks are exactly this format (32 weights, w = d*q + m), so the embedded model's
weights run as stored instead of being expanded: a decode step then reads ~4.5 bits per weight instead
of 16. Two implementations:
- Q4Linear: the C kernels (omni/kernels/q4_matmul.py) on the GGUF blocks themselves, int16 activations.
  All 120 projections of SmolLM2-135M for one token: ~7-8 ms on 2 cores.
- Int4Linear: torch's CPU int4 GEMM with bfloat16 activations (scales and zero points rounded to
  bfloat16), used where the C kernels cannot be built. Measured on 2 cores (90 matrices of 1536x576, one
  token): 6.1 ms vs 10.4 ms for bfloat16 weights; for a 37-token prefill 82 ms vs 305 ms.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from omni.kernels.cpu import Library
from omni.kernels.q4_matmul import dequantize_q4_1, q4_1_matmul

GROUP = 32
_BLOCK_N = 32  # rows per block of torch's CPU int4 packing


def _pack_blocked(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] uint8 0..15 -> torch's CPU int4 packing [N, K/2] uint8, in a few vectorised passes.

    That packing (aten's _convert_weight_to_int4pack_for_cpu) stores each block of 32 rows as [K, 16]
    bytes whose low nibble is row j and high nibble row j + 16 of the block. torch's own converter
    takes the weights as int32 and is several times slower; `pack_int4` checks this layout against it
    once per process and uses the converter if they ever disagree.
    """
    N, K = q.shape
    words = q.view(torch.int64).view(N // _BLOCK_N, 2, _BLOCK_N // 2, K // 8)  # 8 weights per word
    packed = torch.bitwise_or(words[:, 0], words[:, 1] << 4).view(torch.uint8)  # [N/32, 16, K]
    return packed.transpose(1, 2).contiguous().view(N, K // 2)


@functools.cache
def _blocked_layout_matches() -> bool:
    q = torch.randint(0, 16, (2 * _BLOCK_N, 4 * GROUP), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return torch.equal(_pack_blocked(q), torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] integers 0..15 -> the packed weight torch's CPU int4 matmul takes."""
    if q.dtype == torch.uint8 and q.shape[0] % _BLOCK_N == 0 and q.shape[1] % 8 == 0 and _blocked_layout_matches():
        return _pack_blocked(q.contiguous())
    return torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


class Int4Linear(nn.Module):
    packed: torch.Tensor  # torch's CPU int4 packing of q [N, K]
    scales_zeros: torch.Tensor  # [K / 32, N, 2] bfloat16: per group (scale, zero), w = (q - 8) * scale + zero
    bias: torch.Tensor | None

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """q [N, K] integers 0..15, d and m [N, K / 32]: weight = d * q + m per group of 32 columns."""
        super().__init__()
        N, K = q.shape
        if K % GROUP or d.shape != (N, K // GROUP) or m.shape != d.shape:
            raise ValueError(f"int4 weights need K % 32 == 0 and [N, K/32] scales; got q {q.shape}, d {d.shape}")
        self.in_features, self.out_features = K, N
        self.register_buffer("packed", pack_int4(q))
        zero = m + 8 * d
        self.register_buffer("scales_zeros", torch.stack([d, zero], dim=-1).transpose(0, 1).contiguous().bfloat16())
        self.register_buffer("bias", None if bias is None else bias.bfloat16())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The effective weight [N, K] in float32 (for tests)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, self.scales_zeros).float().T


class Q4Linear(nn.Module):
    """4-bit linear layer on the C kernels (omni/kernels/q4_matmul.py): weights kept in GGUF's Q4_1 blocks.

    Reads 20 bytes per 32 weights; activations are quantised to int8 per block of 32 inside the kernel.
    On 2 cores all 30 SmolLM2-135M layers' projections take ~7 ms per token (torch's int4 GEMM: ~9 ms plus
    casts), and `DecoderLM` runs whole decode steps through the same blocks in one call.
    """

    blocks: torch.Tensor  # [N, K/32 * 20] uint8
    bias: torch.Tensor | None  # [N] float32

    def __init__(self, lib: Library, blocks: torch.Tensor, in_features: int, bias: torch.Tensor | None = None) -> None:
        """blocks [N, K/32 * 20] uint8 (omni.kernels.q4_matmul.pack_q4_1, or GGUF Q4_1 bytes), K = in_features."""
        super().__init__()
        if in_features % GROUP or blocks.dim() != 2 or blocks.shape[1] != in_features // GROUP * 20:
            raise ValueError(f"Q4_1 blocks {tuple(blocks.shape)} do not fit {in_features} input features")
        self.lib = lib
        self.out_features, self.in_features = blocks.shape[0], in_features
        self.register_buffer("blocks", blocks.contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        out = q4_1_matmul(self.lib, self.blocks, self.in_features, flat, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The effective weight [N, K] in float32 (for tests)."""
        return dequantize_q4_1(self.blocks, self.in_features)
