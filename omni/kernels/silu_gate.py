"""The SiLU gate of a SwiGLU MLP: silu(gate) * up, from separate tensors or one fused gate_up projection.

The fused form reads the gate_up projection's output [..., 2I] (gate in the first I columns, up in the
last I, as `GatedMLP.gate_up_proj` lays them out) and writes [..., I]: one launch instead of eager's
split + silu + mul (2 launches, an intermediate [..., I] tensor). The kernel computes in float32 and rounds
once; eager torch rounds silu(gate) to the dtype before the product, so in bfloat16 the two differ by at
most about one unit in the last place of the result.
"""

import torch
import torch.nn.functional as F

from omni.kernels._triton import next_pow2, require_triton, round_to, tl, triton, use_triton

_BLOCK = 1024  # columns per program; 18944 (7B intermediate) = 18.5 blocks, the tail masked

if triton is not None:

    @triton.jit
    def _silu_gate_kernel(
        gate_ptr, up_ptr, out_ptr, stride_gate, stride_up, stride_out, I, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < I
        g = tl.load(gate_ptr + row * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + row * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * stride_out + cols, round_to(y, out_ptr.dtype.element_ty), mask=mask)


def _split(gate_up: torch.Tensor, up: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if up is None:
        if gate_up.shape[-1] % 2:
            raise ValueError(f"a fused gate_up needs an even last dimension, got {tuple(gate_up.shape)}")
        gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
        return gate, up
    if up.shape != gate_up.shape or up.dtype != gate_up.dtype:
        raise ValueError(f"gate {tuple(gate_up.shape)} {gate_up.dtype} and up {tuple(up.shape)} {up.dtype} "
                         "must have the same shape and dtype")
    return gate_up, up


def silu_gate_reference(gate_up: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up as the model computes it; pass (gate, up) [..., I] or one gate_up [..., 2I]."""
    gate, up = _split(gate_up, up)
    return F.silu(gate) * up


def silu_gate_triton(gate_up: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference."""
    require_triton("silu_gate")
    gate, up = _split(gate_up, up)
    I = gate.shape[-1]
    g2, u2 = gate.reshape(-1, I), up.reshape(-1, I)  # a view for the usual [..., 2I] row-major input
    if g2.stride(-1) != 1 or u2.stride(-1) != 1:
        g2, u2 = g2.contiguous(), u2.contiguous()
    out = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    block = min(_BLOCK, next_pow2(I))
    if g2.shape[0] and I:
        _silu_gate_kernel[(g2.shape[0], triton.cdiv(I, block))](
            g2, u2, out, g2.stride(0), u2.stride(0), out.stride(0), I, BLOCK=block,
        )
    return out.view(*gate.shape)


def silu_gate(gate_up: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up: Triton on CUDA, the eager reference elsewhere."""
    if use_triton(gate_up):
        return silu_gate_triton(gate_up, up)
    return silu_gate_reference(gate_up, up)
