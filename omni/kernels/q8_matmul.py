"""8-bit weight x float32 activation matmul on the CPU, weights in GGUF's Q8_0 blocks (kernel: cpu/omni_cpu.c).

Used for the output head: y[T, V] = x[T, C] @ W[V, C]^T with W as V rows of C/32 blocks (f16 scale d,
32 x int8; w = d * q). Activations stay float32, so for a head stored as Q8_0 (SmolLM2's tied embedding)
the logits are exact up to float32 summation order, at a quarter of the bytes a float32 head reads.
"""

from __future__ import annotations

import torch

from omni.kernels.cpu import BLOCK_Q8_0, Library

QK = 32


def pack_q8_0(w: torch.Tensor) -> torch.Tensor:
    """Quantise w [N, K] to Q8_0 blocks [N, K/32 * 34] uint8 as ggml does (d = max|w| / 127, stored f16).

    Re-quantising weights that were dequantised from Q8_0 gives back the same blocks.
    """
    N, K = w.shape
    if K % QK:
        raise ValueError(f"Q8_0 needs K % 32 == 0, got {K}")
    wb = w.float().reshape(N, K // QK, QK)
    d = wb.abs().amax(-1) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(wb * inv[..., None]).clamp(-127, 127).to(torch.int8)
    head = d.to(torch.float16).view(torch.uint8).view(N, K // QK, 2)
    return torch.cat([head, q.view(torch.uint8)], dim=-1).reshape(N, K // QK * BLOCK_Q8_0).contiguous()


def dequantize_q8_0(blocks: torch.Tensor, K: int) -> torch.Tensor:
    """Blocks [N, K/32 * 34] -> float32 [N, K]."""
    N = blocks.shape[0]
    b = blocks.view(N, K // QK, BLOCK_Q8_0)
    d = b[..., :2].contiguous().view(torch.float16).float()  # [N, K/32, 1]
    return (b[..., 2:].contiguous().view(torch.int8).float() * d).reshape(N, K)


def q8_0_matmul_reference(blocks: torch.Tensor, K: int, x: torch.Tensor) -> torch.Tensor:
    """What `q8_0_matmul` computes, in float64: [T, K] -> [T, N] float32."""
    return (x.double() @ dequantize_q8_0(blocks, K).double().T).float()


def q8_0_matmul(lib: Library, blocks: torch.Tensor, K: int, x: torch.Tensor) -> torch.Tensor:
    """x [T, K] float32 contiguous -> [T, N] float32."""
    N = blocks.shape[0]
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != K or not x.is_contiguous():
        raise ValueError(f"q8_0_matmul wants contiguous float32 [T, {K}], got {x.dtype} {tuple(x.shape)}")
    y = torch.empty(x.shape[0], N, dtype=torch.float32)
    lib.lib.omni_q8_0_matmul(blocks.data_ptr(), N, K, x.data_ptr(), x.shape[0], y.data_ptr(),
                             torch.get_num_threads())
    return y
