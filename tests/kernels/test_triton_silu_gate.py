"""SiLU gate (omni/kernels/silu_gate.py): Triton kernel against the eager reference, fused and split inputs."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.silu_gate import silu_gate, silu_gate_reference, silu_gate_triton

# I = 75 (one masked block) and I = 1100 (two column blocks of 1024, the second masked)
SIZES = [((2, 3), 75), ((1,), 1100)]


@pytest.mark.parametrize(("lead", "I"), SIZES)
def test_fused_gate_up_float32(device: torch.device, lead: tuple[int, ...], I: int) -> None:
    gate_up = (3 * torch.randn(*lead, 2 * I)).to(device)
    out = silu_gate_triton(gate_up)
    assert out.shape == (*lead, I)
    # Both evaluate silu in float32 (x / (1 + exp(-x)) vs torch's own formula) and one product:
    # a few float32 ulps, 1e-6 relative is ~8 ulps.
    torch.testing.assert_close(out, silu_gate_reference(gate_up), rtol=1e-6, atol=1e-7)


def test_separate_gate_and_up_bfloat16(device: torch.device) -> None:
    gate, up = (3 * torch.randn(2, 5, 93)).bfloat16().to(device), torch.randn(2, 5, 93).bfloat16().to(device)
    out = silu_gate_triton(gate, up)
    # The kernel rounds once; eager rounds silu(gate) to bf16 (<= 2^-9 relative) and then the product:
    # the results can differ by one bf16 step, 2^-7 relative at most.
    torch.testing.assert_close(out, silu_gate_reference(gate, up), rtol=2**-7, atol=1e-6)


def test_dispatch_and_errors() -> None:
    gate_up = torch.randn(3, 20)
    assert torch.equal(silu_gate(gate_up), silu_gate_reference(gate_up))
    with pytest.raises(ValueError, match="even last dimension"):
        silu_gate(torch.randn(3, 21))
    with pytest.raises(ValueError, match="same shape"):
        silu_gate(torch.randn(3, 10), torch.randn(3, 11))
