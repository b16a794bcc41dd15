"""Weight-only int4 matmul (omni/kernels/int4_matmul.py): packing, quantisation, and the Triton kernel against
the eager reference for decode (M = 1, 5) and prefill-like (M = 18) shapes, odd N, several groups."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.int4_matmul import (
    dequantize_int4,
    int4_matmul,
    int4_matmul_reference,
    int4_matmul_triton,
    pack_int4,
    quantize_int4,
    unpack_int4,
)

N = 37  # one full 32-column tile + 5


def _summation_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Worst-case float32 error of a K-term dot product summed in any order: K * 2^-24 * sum |x| |w|."""
    return x.shape[-1] * 2**-24 * (x.abs().float() @ w.abs().float().T)


def test_packing_layout_and_round_trip() -> None:
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q, 32)
    assert packed.shape == (3, 32)
    assert int(packed[1, 16 + 3]) == int(q[1, 32 + 3]) | int(q[1, 32 + 16 + 3]) << 4, "group 2, byte 3"
    assert torch.equal(unpack_int4(packed, 32), q)


def test_quantize_error_bound() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, 256, generator=g) + torch.linspace(-2, 2, N)[:, None]  # groups off centre
    w[3, :128] = 0.25  # a constant group
    packed, scale, mins = quantize_int4(w, 128)
    assert packed.shape == (N, 128) and scale.shape == (N, 2) and scale.dtype == torch.bfloat16
    wg = w.view(N, 2, 128)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    # Half a step from rounding, plus the bf16 rounding of the stored min and scale (2^-9 of the range ends).
    bound = scale.float()[..., None] / 2 + 2**-8 * (lo.abs() + hi.abs())
    err = (dequantize_int4(packed, scale, mins, 128).view(N, 2, 128) - wg).abs()
    assert (err <= bound + 1e-7).all()
    assert err[3, 0].max() <= 2**-9 * 0.25, "a constant group is its (bf16) minimum"


@pytest.mark.parametrize(("M", "K", "group"), [(1, 96, 32), (5, 96, 32), (18, 256, 64)])
def test_float32_matches_reference(device: torch.device, M: int, K: int, group: int) -> None:
    g = torch.Generator().manual_seed(M)
    packed, scale, mins = quantize_int4(torch.randn(N, K, generator=g), group)
    x = torch.randn(M, K, generator=g)
    bias = torch.randn(N, generator=g) if M == 18 else None
    args = [t.to(device) for t in (x, packed, scale, mins)]
    out = int4_matmul_triton(*args, group, None if bias is None else bias.to(device)).cpu()
    ref = int4_matmul_reference(x, packed, scale, mins, group, bias)
    assert out.shape == (M, N)
    assert ((out - ref).abs() <= _summation_bound(x, dequantize_int4(packed, scale, mins, group)) + 1e-6).all()


def test_bfloat16(device: torch.device) -> None:
    g = torch.Generator().manual_seed(7)
    K, group = 128, 32
    packed, scale, mins = quantize_int4(torch.randn(N, K, generator=g), group)
    x = torch.randn(3, K, generator=g).bfloat16()
    out = int4_matmul_triton(*(t.to(device) for t in (x, packed, scale, mins)), group).cpu()
    ref = int4_matmul_reference(x, packed, scale, mins, group)
    w = dequantize_int4(packed, scale, mins, group)
    # The kernel rounds each dequantised weight to bf16 (2^-9 relative) before its exact float32 products;
    # then both round the output to bf16 (one step, <= 2^-7 relative, apart at most).
    bound = (2**-9 + K * 2**-24) * (x.float().abs() @ w.abs().T) + 2**-7 * ref.float().abs()
    assert ((out.float() - ref.float()).abs() <= bound).all()


def test_dispatch_and_errors() -> None:
    packed, scale, mins = quantize_int4(torch.randn(N, 64), 32)
    x = torch.randn(2, 64)
    assert torch.equal(int4_matmul(x, packed, scale, mins, 32), int4_matmul_reference(x, packed, scale, mins, 32))
    with pytest.raises(ValueError, match="group_size must be a power of two"):
        quantize_int4(torch.randn(N, 96), 48)
    with pytest.raises(ValueError, match="scale and min must be"):
        int4_matmul(x, packed, scale[:, :1], mins[:, :1], 32)
