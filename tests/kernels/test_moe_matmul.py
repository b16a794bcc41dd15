"""Grouped expert matmuls (omni/kernels/moe_matmul.py): the Triton kernel against the eager reference on odd shapes
(rows not a multiple of the tile, experts with no rows, top-k > 1), and the whole expert FFN against its
token-by-token definition."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.moe_matmul import (
    Int4ExpertWeights,
    Int8ExpertWeights,
    grouped_matmul,
    grouped_matmul_reference,
    grouped_matmul_triton,
    moe_experts,
    moe_experts_naive,
    moe_route,
)


def _routing(n: int, k: int, e: int, g: torch.Generator, skip: tuple[int, ...] = ()) -> torch.Tensor:
    """top_idx [n, k]: k distinct experts per token, never one of `skip` (experts with zero tokens)."""
    allowed = torch.tensor([i for i in range(e) if i not in skip])
    scores = torch.rand(n, len(allowed), generator=g)
    return allowed[scores.topk(k, dim=-1).indices]


@pytest.mark.parametrize("rows,k_dim,n_dim,experts,block_m", [(37, 24, 40, 6, 16), (5, 64, 48, 8, 16),
                                                              (150, 40, 20, 3, 64), (0, 16, 16, 4, 16)])
def test_grouped_matmul_triton_matches_reference(device: torch.device, rows: int, k_dim: int, n_dim: int,
                                                 experts: int, block_m: int) -> None:
    g = torch.Generator().manual_seed(rows + experts)
    top = _routing(rows, 1, experts, g, skip=(1,)) if rows else torch.zeros(0, 1, dtype=torch.long)
    order, offsets = moe_route(top, experts)
    assert offsets[2] == offsets[1], "expert 1 has no rows"
    x = torch.randn(rows, k_dim, generator=g)[order]
    w = torch.randn(experts, n_dim, k_dim, generator=g)
    want = grouped_matmul_reference(x, w, offsets)
    if rows:  # the reference is one matmul per expert: check it against a per-row product
        expert_of_row = torch.repeat_interleave(torch.arange(experts), offsets[1:] - offsets[:-1])
        torch.testing.assert_close(want, torch.einsum("mk,mnk->mn", x, w[expert_of_row]), rtol=1e-5, atol=1e-5)
    got = grouped_matmul_triton(x.to(device), w.to(device), offsets.to(device), block_m=block_m).cpu()
    assert got.shape == (rows, n_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_matmul_bfloat16(device: torch.device) -> None:
    g = torch.Generator().manual_seed(3)
    top = _routing(29, 2, 5, g)
    order, offsets = moe_route(top, 5)
    x = torch.randn(29 * 2, 32, generator=g).to(torch.bfloat16)
    w = torch.randn(5, 24, 32, generator=g).to(torch.bfloat16)
    want = grouped_matmul_reference(x.float(), w.float(), offsets)  # exact products, float32 sums
    got = grouped_matmul_triton(x.to(device), w.to(device), offsets.to(device)).cpu()
    # one rounding to bfloat16 (2^-9 relative) of a float32 sum that differs only in order
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-3)


@pytest.mark.parametrize("n,k,experts", [(1, 1, 4), (19, 3, 7), (33, 8, 16)])
def test_moe_experts_match_the_definition(device: torch.device, n: int, k: int, experts: int) -> None:
    g = torch.Generator().manual_seed(n * k)
    C, I = 24, 20
    x = torch.randn(n, C, generator=g)
    gate_up = torch.randn(experts, 2 * I, C, generator=g) / C**0.5
    down = torch.randn(experts, C, I, generator=g) / I**0.5
    top = _routing(n, k, experts, g, skip=(0,))
    top_w = torch.rand(n, k, generator=g)
    want = moe_experts_naive(x, gate_up, down, top, top_w)
    torch.testing.assert_close(moe_experts(x, gate_up, down, top, top_w), want, rtol=1e-5, atol=1e-5)
    got = moe_experts(x.to(device), gate_up.to(device), down.to(device), top.to(device), top_w.to(device),
                      matmul=grouped_matmul_triton).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dispatch_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    top = _routing(7, 2, 4, g)
    order, offsets = moe_route(top, 4)
    assert offsets.tolist()[-1] == 14 and torch.equal(top.reshape(-1)[order], top.reshape(-1).sort().values)
    x, w = torch.randn(14, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    assert torch.equal(grouped_matmul(x, w, offsets), grouped_matmul_reference(x, w, offsets))
    with pytest.raises(ValueError, match="offsets must be"):
        grouped_matmul(x, w, offsets[:-1])
    with pytest.raises(ValueError, match=r"x \[M, K\] and w \[E, N, K\]"):
        grouped_matmul(x, w[:, :, :5], offsets)
    with pytest.raises(ValueError, match="offsets end at"):
        grouped_matmul(x[:10], w, offsets)
    with pytest.raises(ValueError, match="expert index out of range"):
        moe_route(top + 1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_int8_weights(device: torch.device, dtype: torch.dtype) -> None:
    """int8 expert weights with a per-expert, per-output-channel scale: the reference equals a float matmul with
    the dequantised weights, and the Triton kernel (codes converted in the tile, scale after the sum) equals it."""
    g = torch.Generator().manual_seed(11)
    top = _routing(41, 2, 6, g, skip=(4,))
    order, offsets = moe_route(top, 6)
    x = torch.randn(41 * 2, 48, generator=g)[order]
    w = Int8ExpertWeights.quantize(torch.randn(6, 40, 48, generator=g))
    assert w.q.dtype == torch.int8 and w.scale.shape == (6, 40)
    want = grouped_matmul_reference(x, w.dequantized(), offsets)
    torch.testing.assert_close(grouped_matmul_reference(x, w.q, offsets, w.scale), want, rtol=1e-5, atol=1e-5)
    got = grouped_matmul_triton(x.to(device, dtype), w.q.to(device), offsets.to(device), scale=w.scale.to(device))
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(got.cpu().float(), want, rtol=tol, atol=tol * float(want.abs().max()))
    with pytest.raises(ValueError, match="int8"):
        grouped_matmul_reference(x, w.dequantized(), offsets, w.scale)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_moe_experts_with_quantised_weights_match_the_definition(device: torch.device, kind: str) -> None:
    """The expert FFN on quantised stacks equals the token-by-token definition on their dequantised weights."""
    g = torch.Generator().manual_seed(12)
    E, C, I, n, k = 5, 64, 32, 17, 2
    x = torch.randn(n, C, generator=g)
    gate_up, down = torch.randn(E, 2 * I, C, generator=g) / C**0.5, torch.randn(E, C, I, generator=g) / I**0.5
    top = _routing(n, k, E, g)
    top_w = torch.softmax(torch.randn(n, k, generator=g), -1)
    if kind == "int8":
        qg, qd = Int8ExpertWeights.quantize(gate_up), Int8ExpertWeights.quantize(down)
    else:
        qg, qd = Int4ExpertWeights.quantize(gate_up, 32), Int4ExpertWeights.quantize(down, 32)
    assert qg.shape == gate_up.shape and qd.shape == down.shape
    want = moe_experts_naive(x, qg.dequantized(), qd.dequantized(), top, top_w)
    torch.testing.assert_close(moe_experts(x, qg, qd, top, top_w), want, rtol=1e-4, atol=1e-5)
    moved = [type(w)(**{f: (t.to(device) if isinstance(t, torch.Tensor) else t) for f, t in vars(w).items()})
             for w in (qg, qd)]
    got = moe_experts(x.to(device), *moved, top.to(device), top_w.to(device)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (want - moe_experts_naive(x, gate_up, down, top, top_w)).abs().max() > 1e-6  # quantisation is visible
