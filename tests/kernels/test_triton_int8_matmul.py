"""Weight-only int8 matmul (omni/kernels/int8_matmul.py): quantisation, and the Triton kernel against the eager
reference for decode (M = 1, 3) and prefill-like (M = 20) shapes, N and K not multiples of the tiles."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.int8_matmul import (
    dequantize_int8,
    int8_matmul,
    int8_matmul_reference,
    int8_matmul_triton,
    quantize_int8,
)

N, K = 37, 200  # 37 = one full 32-column tile + 5; 200 = one 128-wide K step + a masked 72


def _summation_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Worst-case float32 error of a K-term dot product summed in any order: K * 2^-24 * sum |x| |w|."""
    return x.shape[-1] * 2**-24 * (x.abs().float() @ w.abs().float().T)


def test_quantize_round_trip() -> None:
    w = torch.randn(N, K) * torch.linspace(0.01, 3, N)[:, None]  # rows with very different ranges
    w[5] = 0  # an all-zero row must not divide by zero
    q, scale = quantize_int8(w.bfloat16())
    assert q.dtype == torch.int8 and scale.shape == (N,)
    assert int(q.abs().max()) == 127 and bool((q[5] == 0).all())
    assert (q.abs().amax(dim=1)[torch.arange(N) != 5] == 127).all(), "each row's largest weight uses the full range"
    err = (dequantize_int8(q, scale) - w.bfloat16().float()).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all(), "round to nearest: at most half a step per weight"


@pytest.mark.parametrize("M", [1, 3, 20])
def test_float32_matches_reference(device: torch.device, M: int) -> None:
    g = torch.Generator().manual_seed(M)
    q, scale = quantize_int8(torch.randn(N, K, generator=g))
    x = torch.randn(M, K, generator=g)
    bias = torch.randn(N, generator=g) if M == 20 else None
    out = int8_matmul_triton(x.to(device), q.to(device), scale.to(device), None if bias is None else bias.to(device))
    ref = int8_matmul_reference(x, q, scale, bias)
    assert out.shape == (M, N)
    bound = _summation_bound(x, dequantize_int8(q, scale)) + 1e-6
    assert ((out.cpu() - ref).abs() <= bound).all()


def test_bfloat16_batched_leading_dims(device: torch.device) -> None:
    g = torch.Generator().manual_seed(4)
    q, scale = quantize_int8(torch.randn(N, K, generator=g))
    x = torch.randn(2, 3, K, generator=g).bfloat16()
    out = int8_matmul_triton(x.to(device), q.to(device), scale.to(device)).cpu()
    ref = int8_matmul_reference(x, q, scale)
    assert out.shape == (2, 3, N) and out.dtype == torch.bfloat16
    # int8 -> bf16 is exact and bf16 products are exact in float32: the float32 sums differ by summation
    # order only; each is then rounded to bf16, so they may land one bf16 step (<= 2^-7 relative) apart.
    bound = _summation_bound(x.float(), dequantize_int8(q, scale)) + 2**-7 * ref.float().abs()
    assert ((out.float() - ref.float()).abs() <= bound).all()


def test_dispatch_and_errors() -> None:
    q, scale = quantize_int8(torch.randn(N, K))
    x = torch.randn(2, K)
    assert torch.equal(int8_matmul(x, q, scale), int8_matmul_reference(x, q, scale))
    with pytest.raises(ValueError, match="int8 q"):
        int8_matmul(torch.randn(2, K + 1), q, scale)
    with pytest.raises(ValueError, match=r"scale \(and bias\) must be \[37\]"):
        int8_matmul(x, q, scale[:-1])
