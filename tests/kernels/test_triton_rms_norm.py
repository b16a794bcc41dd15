"""Fused residual add + RMSNorm (omni/kernels/rms_norm.py): Triton kernel against the eager reference, and the
reference against the model's own RMSNorm."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.rms_norm import add_rms_norm, add_rms_norm_reference, add_rms_norm_triton

# Rows of 67 and 111 columns: not powers of two, so the kernel's masked tail is exercised.
SHAPES = [(1, 67), (3, 5, 111)]


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    res = (3 * torch.randn(shape, generator=g)).to(dtype)
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(dtype)
    return x.to(device), res.to(device), w.to(device)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_reference(device: torch.device, shape: tuple[int, ...]) -> None:
    x, res, w = _inputs(shape, torch.float32, device, seed=len(shape))
    out, new_res = add_rms_norm_triton(x, res, w, 1e-6)
    ref_out, ref_res = add_rms_norm_reference(x, res, w, 1e-6)
    torch.testing.assert_close(new_res, ref_res, rtol=0, atol=0)  # one float32 add, same rounding
    # Only the mean square's summation order differs: <= 111 terms, relative error of rstd well under
    # 111 * 2^-24 = 7e-6 in the worst case; outputs are O(3), so 1e-5 bounds it.
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_bfloat16_within_one_unit_in_the_last_place(device: torch.device, shape: tuple[int, ...]) -> None:
    x, res, w = _inputs(shape, torch.bfloat16, device, seed=7)
    out, new_res = add_rms_norm_triton(x, res, w, 1e-6)
    ref_out, ref_res = add_rms_norm_reference(x, res, w, 1e-6)
    assert torch.equal(new_res, ref_res), "the bf16 residual add rounds once, exactly as torch's add"
    # Both round the normalised row to bf16 and then the product; a float32 rstd that differs in the last
    # bits can move a value across a rounding boundary, so at most one bf16 step (2^-7 relative) per element.
    torch.testing.assert_close(out, ref_out, rtol=2**-7, atol=1e-6)
    assert (out != ref_out).float().mean() < 0.02, "ties should be rare, not systematic"


def test_without_residual_and_strided_input(device: torch.device) -> None:
    x, _, w = _inputs((4, 2 * 53), torch.float32, device, seed=3)
    x = x[:, ::2]  # a non-contiguous view of 53 columns
    out, new_res = add_rms_norm_triton(x, None, w[:53], 1e-5)
    ref_out, _ = add_rms_norm_reference(x, None, w[:53], 1e-5)
    assert new_res is x
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_reference_equals_the_model_norm() -> None:
    from omni.model.layers.norm import RMSNorm

    for dtype in (torch.float32, torch.bfloat16):
        x, res, w = _inputs((2, 3, 40), dtype, torch.device("cpu"), seed=11)
        norm = RMSNorm(40, eps=1e-6).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(w)
        h = res + x
        out, new_res = add_rms_norm_reference(x, res, w, 1e-6)
        assert torch.equal(new_res, h)
        # float32: torch's fused rms_norm applies the weight inside; ours multiplies after: a few ulps.
        torch.testing.assert_close(out, norm(h), rtol=1e-6 if dtype == torch.float32 else 0,
                                   atol=1e-6 if dtype == torch.float32 else 0)


def test_dispatch_uses_reference_on_cpu_and_rejects_bad_shapes() -> None:
    x, res, w = _inputs((2, 9), torch.float32, torch.device("cpu"), seed=5)
    out, _ = add_rms_norm(x, res, w, 1e-6)
    assert torch.equal(out, add_rms_norm_reference(x, res, w, 1e-6)[0])
    with pytest.raises(ValueError, match=r"weight must be \[9\]"):
        add_rms_norm(x, res, w[:8], 1e-6)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, res.double(), w, 1e-6)
