"""Fused residual add + RMSNorm: one read of each input and one write of each output per row.

    new_residual = residual + x                       (rounded to the stream's dtype, as `x = x + f(x)` does)
    normed = weight * rms_norm(new_residual)          (statistics in float32)

Rounding follows our RMSNorm (omni/model/layers/norm.py) step by step: the normalised row is rounded to the
activation dtype first and then multiplied by the weight, so in bfloat16 the kernel and the model differ only
by the float32 summation order of the mean square (the two roundings are reproduced, not fused away).
At decode a layer does this twice on a [1, 3584] row (7B): the eager bf16 path is at least 5 launches
(add, upcast, norm, downcast, weight multiply), each a round trip of the row; the kernel is one launch
moving 4 rows (x and residual in, normed and residual out).
"""

import torch
import torch.nn.functional as F

from omni.kernels._triton import next_pow2, require_triton, round_to, tl, triton, use_triton

if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
        stride_x, stride_res, stride_out, stride_res_out,
        C, eps,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < C
        h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            h += tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
            h = round_to(h, res_out_ptr.dtype.element_ty)  # the residual stream is kept in its own dtype
            tl.store(res_out_ptr + row * stride_res_out + cols, h, mask=mask)
            h = h.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / C + eps)
        y = round_to(h * rstd, out_ptr.dtype.element_ty).to(tl.float32)  # RMSNorm's rounding before the weight
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_out + cols, round_to(y * w, out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor) -> None:
    C = x.shape[-1]
    if weight.shape != (C,):
        raise ValueError(f"weight must be [{C}] for x {tuple(x.shape)}, got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match x {tuple(x.shape)} {x.dtype}")


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference: x, residual [..., C] -> (normed [..., C], new residual [..., C]), both in x's dtype.

    Without a residual (a model's first layer) the new residual is x itself."""
    _check(x, residual, weight)
    h = x if residual is None else residual + x
    normed = F.rms_norm(h.float(), (h.shape[-1],), None, eps).to(h.dtype)
    return (weight.to(h.dtype) * normed).to(h.dtype), h


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference."""
    require_triton("add_rms_norm")
    _check(x, residual, weight)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty_like(x2)
    if residual is None:
        res2, res_out = x2, x2  # unused by the kernel (HAS_RESIDUAL=False)
    else:
        res2 = residual.reshape(-1, C)
        if res2.stride(-1) != 1:
            res2 = res2.contiguous()
        res_out = torch.empty_like(x2)
    if x2.shape[0]:
        _add_rms_norm_kernel[(x2.shape[0],)](
            x2, res2, weight.contiguous(), out, res_out,
            x2.stride(0), res2.stride(0), out.stride(0), res_out.stride(0),
            C, eps, HAS_RESIDUAL=residual is not None, BLOCK=next_pow2(C),
        )
    new_residual = x if residual is None else res_out.view(x.shape)
    return out.view(x.shape), new_residual


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new residual) of residual + x: Triton on CUDA, the eager reference elsewhere."""
    if use_triton(x):
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)
