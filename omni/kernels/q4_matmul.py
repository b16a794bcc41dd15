"""4-bit weight x float activation matmul on the CPU, weights in GGUF's Q4_1 blocks (kernel: cpu/omni_cpu.c).

y[T, N] = x[T, K] @ W[N, K]^T (+ bias) where each row of W is K/32 blocks of 20 bytes (f16 d, f16 m,
16 bytes of nibbles; w = d * q + m) and x is quantised per block of 32 to int16 with a float scale
(scale = max|x| / 32767, round half to even) before the integer dot products (int8, as llama.cpp uses,
derailed SmolLM2-135M's greedy replies: see omni_cpu.c). The eager reference below
does exactly that quantisation in torch, so kernel and reference differ only by float32 summation order.
"""

from __future__ import annotations

import torch

from omni.kernels.cpu import BLOCK_Q4_1, BLOCK_Q16_ACT, Library

QK = 32


def pack_q4_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """q [N, K] integers 0..15, d and m [N, K/32] (weight = d * q + m) -> blocks [N, K/32 * 20] uint8.

    d and m are stored as float16, as in the GGUF file they came from (exact for values read from it).
    """
    N, K = q.shape
    if K % QK or d.shape != (N, K // QK) or m.shape != d.shape:
        raise ValueError(f"Q4 weights need K % 32 == 0 and [N, K/32] scales; got q {q.shape}, d {d.shape}")
    nib = q.to(torch.uint8).reshape(N, K // QK, 2, QK // 2)
    qs = nib[:, :, 0] | (nib[:, :, 1] << 4)  # byte j: weight j (low nibble), weight j + 16 (high nibble)
    dm = torch.stack([d, m], dim=-1).to(torch.float16).view(torch.uint8)  # [N, K/32, 4]
    return torch.cat([dm, qs], dim=-1).reshape(N, K // QK * BLOCK_Q4_1).contiguous()


def unpack_q4_1(blocks: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `pack_q4_1`: (q [N, K] uint8, d [N, K/32] float32, m [N, K/32] float32)."""
    N = blocks.shape[0]
    b = blocks.view(N, K // QK, BLOCK_Q4_1)
    dm = b[..., :4].contiguous().view(torch.float16).float()  # [N, K/32, 2]
    qs = b[..., 4:]
    q = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(N, K)
    return q, dm[..., 0], dm[..., 1]


def dequantize_q4_1(blocks: torch.Tensor, K: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Blocks [N, K/32 * 20] -> the weight [N, K] in `dtype` (w = d * q + m per group of 32)."""
    q, d, m = unpack_q4_1(blocks, K)
    return (q.to(dtype).view(q.shape[0], -1, QK) * d.to(dtype)[..., None] + m.to(dtype)[..., None]).view(q.shape)


def quantize_q16_act_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] float32 -> (q [T, K] int16, scale [T, K/32] float32): x ~= scale * q per block of 32."""
    T, K = x.shape
    xb = x.float().reshape(T, K // QK, QK)
    d = xb.abs().amax(-1) / 32767
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(xb * inv[..., None])  # half to even, as the kernel's cvtps/nearbyint
    return q.to(torch.int16).reshape(T, K), d


def q4_1_matmul_reference(blocks: torch.Tensor, K: int, x: torch.Tensor, bias: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """What `q4_1_matmul` computes, in float64 torch ops: [T, K] -> [T, N] float32."""
    w = dequantize_q4_1(blocks, K, torch.float64)
    xq, xd = quantize_q16_act_reference(x)
    xs = (xq.double().view(x.shape[0], -1, QK) * xd.double()[..., None]).reshape(x.shape)
    y = xs @ w.T
    if bias is not None:
        y = y + bias.double()
    return y.float()


def q4_1_matmul(lib: Library, blocks: torch.Tensor, K: int, x: torch.Tensor, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    """x [T, K] float32 contiguous -> [T, N] float32 (see the module docstring)."""
    N = blocks.shape[0]
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != K or not x.is_contiguous():
        raise ValueError(f"q4_1_matmul wants contiguous float32 [T, {K}], got {x.dtype} {tuple(x.shape)}")
    y = torch.empty(x.shape[0], N, dtype=torch.float32)
    lib.lib.omni_q4_1_matmul(blocks.data_ptr(), N, K, x.data_ptr(), x.shape[0], y.data_ptr(),
                             None if bias is None else bias.data_ptr(), torch.get_num_threads())
    return y


def quantize_q16_act(lib: Library, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's own activation quantisation, returned as `quantize_q16_act_reference` does (for tests)."""
    T, K = x.shape
    out = torch.empty(T, K // QK, BLOCK_Q16_ACT, dtype=torch.uint8)
    lib.lib.omni_quantize_q16_act(x.contiguous().data_ptr(), out.data_ptr(), T, K)
    d = out[..., :4].contiguous().view(torch.float32)[..., 0]
    return out[..., 8:].contiguous().view(torch.int16).reshape(T, K), d
