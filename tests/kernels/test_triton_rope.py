"""Rotary embedding of q and k in place (omni/kernels/rope.py): plain RoPE and three-section M-RoPE, the shifted
sink query; Triton kernel against the eager reference, and the reference against the model's rotary code."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.rope import rope_cos_sin_reference, rope_qk_, rope_qk_reference_, rope_qk_triton_

B, T, H, HKV, D = 2, 3, 5, 3, 20  # 20 = 2 x 10 frequencies: not a power of two, masked in the kernel
SECTION = (3, 3, 4)  # Qwen2.5-Omni's (16, 24, 24) scaled down to D/2 = 10


def _inv_freq(d: int = D, theta: float = 1e6) -> torch.Tensor:
    return (1.0 / theta ** (torch.arange(0, d, 2).float() / d)).double()


def _positions(three_axes: bool, g: torch.Generator) -> torch.Tensor:
    # Temporal ids near 1e6 (hours into a session), where float32 angles would already be wrong;
    # height and width ids differ from it so a wrong section-to-axis mapping shows.
    t = 1_000_000 + torch.randint(0, 500, (B, T), generator=g)
    if not three_axes:
        return t
    return torch.stack([t, t + torch.randint(0, 7, (B, T), generator=g), t + torch.randint(0, 9, (B, T), generator=g)])


def _qkv(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k as the model has them: views into one fused qkv projection output [B, T, (H + 2 Hkv) D]."""
    qkv = (2 * torch.randn(B, T, (H + 2 * HKV) * D, generator=g)).to(dtype).to(device)
    qk = qkv[..., : (H + HKV) * D].view(B, T, H + HKV, D)
    return qk[:, :, :H], qk[:, :, H:]


@pytest.mark.parametrize("three_axes,interleaved", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shift_per_row", [None, False, True])
def test_float32_matches_reference(device: torch.device, three_axes: bool, interleaved: bool,
                                   shift_per_row: bool | None) -> None:
    g = torch.Generator().manual_seed(int(three_axes) + 2 * (shift_per_row or 0))
    q, k = _qkv(torch.float32, device, g)
    pos = _positions(three_axes, g).to(device)
    shift = None
    if shift_per_row is not None:
        shift = torch.randint(0, 1000, (B, T) if shift_per_row else (T,), generator=g).to(device)
    section = SECTION if three_axes else None
    q_ref, k_ref = q.clone(), k.clone()
    sink_ref = None if shift is None else torch.empty_like(q_ref)
    rope_qk_reference_(q_ref, k_ref, pos, _inv_freq(), section, sink_ref, shift, interleaved)
    sink = None if shift is None else torch.empty_like(q)
    rope_qk_triton_(q, k, pos, _inv_freq().to(device), section, sink, shift, interleaved)
    # Same float64 angles and float32 tables; the rotation differs by at most ~2 float32 roundings of
    # values |x| < 10: 1e-6 absolute is > 4 ulps there.
    torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, k_ref, rtol=1e-6, atol=1e-6)
    if sink is not None:
        torch.testing.assert_close(sink, sink_ref, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(sink, q, atol=1e-3), "the sink query is rotated to other positions"


def test_bfloat16_matches_reference(device: torch.device) -> None:
    g = torch.Generator().manual_seed(5)
    q, k = _qkv(torch.bfloat16, device, g)
    x_max = max(q.abs().max().item(), k.abs().max().item())
    pos = _positions(True, g).to(device)
    q_ref, k_ref = q.clone(), k.clone()
    rope_qk_reference_(q_ref, k_ref, pos, _inv_freq(), SECTION)
    rope_qk_triton_(q, k, pos, _inv_freq().to(device), SECTION)
    # The reference (as the model) rounds cos and sin to bf16 (2^-9 relative each), both products and the
    # sum; the kernel rounds once. Per element: 2^-9 * (2 |x1| + 2 |x2| + |out| + |out|) < 2^-9 * 7 max|x|.
    tol = 7 * 2**-9 * x_max
    torch.testing.assert_close(q, q_ref, rtol=0, atol=tol)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=tol)


def test_reference_equals_the_model_rotary() -> None:
    from omni.model.layers.rope import apply_rope, rope_cos_sin

    g = torch.Generator().manual_seed(9)
    inv = _inv_freq()
    for three_axes, interleaved in ((False, False), (True, False), (True, True)):
        pos = _positions(three_axes, g)
        section = SECTION if three_axes else None
        cos, sin = rope_cos_sin_reference(pos, inv, section, interleaved)
        m_cos, m_sin = rope_cos_sin(pos, inv, section, interleaved)
        assert torch.equal(cos, m_cos) and torch.equal(sin, m_sin)
        for dtype in (torch.float32, torch.bfloat16):
            q, k = _qkv(dtype, torch.device("cpu"), g)
            want_q = apply_rope(q.transpose(1, 2), m_cos, m_sin).transpose(1, 2)  # the model's [B, H, T, D]
            want_k = apply_rope(k.transpose(1, 2), m_cos, m_sin).transpose(1, 2)
            rope_qk_reference_(q, k, pos, inv, section, interleaved=interleaved)
            assert torch.equal(q, want_q) and torch.equal(k, want_k)


def test_interleaved_axes_are_qwen3_omnis() -> None:
    """Qwen3-Omni's [24, 20, 20] of 64 frequencies: H takes 1, 4, ..., 58, W takes 2, 5, ..., 59, T the rest
    (transformers' `recomposition_frequencies`); the consecutive layout is T, H, W blocks."""
    from omni.model.layers.rope import mrope_axes

    axes = mrope_axes(64, (24, 20, 20), interleaved=True)
    assert (axes == 1).nonzero().flatten().tolist() == list(range(1, 59, 3))
    assert (axes == 2).nonzero().flatten().tolist() == list(range(2, 60, 3))
    assert (axes == 0).nonzero().flatten().tolist() == list(range(0, 58, 3)) + [60, 61, 62, 63]
    assert mrope_axes(64, (16, 24, 24)).tolist() == [0] * 16 + [1] * 24 + [2] * 24
    # the kernel reference reads each axis where mrope_axes says
    pos = torch.stack([torch.full((1, 1), 10), torch.full((1, 1), 200), torch.full((1, 1), 3000)])
    inv = torch.ones(64, dtype=torch.float64)
    cos, _ = rope_cos_sin_reference(pos, inv, (24, 20, 20), interleaved=True)
    torch.testing.assert_close(cos[0, 0, :64], torch.tensor([10.0, 200.0, 3000.0]).double()[axes].cos().float())


def test_dispatch_and_errors() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = _qkv(torch.float32, torch.device("cpu"), g)
    pos = _positions(True, g)
    q2, k2 = q.clone(), k.clone()
    rope_qk_(q, k, pos, _inv_freq(), SECTION)
    rope_qk_reference_(q2, k2, pos, _inv_freq(), SECTION)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    with pytest.raises(ValueError, match="mrope_section"):
        rope_qk_(q, k, pos, _inv_freq(), (3, 3, 3))
    with pytest.raises(ValueError, match=r"inv_freq must be \[head_dim/2\]"):
        rope_qk_(q, k, pos, _inv_freq(18), SECTION)
    with pytest.raises(ValueError, match="positions must be"):
        rope_qk_(q, k, pos[:, :, :2], _inv_freq(), SECTION)
