"""Weight-only int4 matmul for the projections, per group of K: y[M, N] = x[M, K] @ W^T (+ bias).

Each row of W is cut into groups of `group_size` consecutive weights (128 by default); a group keeps a
scale and a minimum (bfloat16) and 4-bit codes q in 0..15, w = q * scale + min (asymmetric, as GGUF's Q4_1,
which keeps a skewed group's range). Packing: in each group, byte j holds weight j in its low nibble and
weight j + group_size/2 in its high one, so the two halves of a group meet two contiguous slices of x.
Bytes per weight: 0.5 + 4 / 128 = 0.53 at group 128, against 2 for bf16: a 7B model's 13 GB of
projections become ~3.5 GB.

The kernel dequantises one group tile at a time to the activation dtype and accumulates in float32. For
bfloat16 activations that rounds each dequantised weight to bf16 (2^-9 relative), which the float32 reference
does not do; for float32 activations the two differ only by summation order.
"""

import torch

from omni.kernels._triton import dot, interpreting, require_triton, round_to, tl, triton, use_triton

if triton is not None:

    @triton.jit
    def _int4_matmul_kernel(
        x_ptr, w_ptr, scale_ptr, min_ptr, bias_ptr, y_ptr, M, N, K, sx_m, sw_n, ss_n, sy_m,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr,
        DOT_FP32: tl.constexpr,
    ):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        j = tl.arange(0, HALF)
        m_mask, n_mask = rm < M, rn < N
        x_rows = x_ptr + rm[:, None].to(tl.int64) * sx_m
        w_cols = w_ptr + rn[None, :].to(tl.int64) * sw_n
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for g in range(0, K // (2 * HALF)):
            k0 = g * 2 * HALF
            xa = tl.load(x_rows + k0 + j[None, :], mask=m_mask[:, None], other=0.0)
            xb = tl.load(x_rows + k0 + HALF + j[None, :], mask=m_mask[:, None], other=0.0)
            p = tl.load(w_cols + g * HALF + j[:, None], mask=n_mask[None, :], other=0)  # [HALF, BLOCK_N] bytes
            s = tl.load(scale_ptr + rn * ss_n + g, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            mn = tl.load(min_ptr + rn * ss_n + g, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            wa = round_to((p & 0xF).to(tl.float32) * s + mn, x_ptr.dtype.element_ty)
            wb = round_to((p >> 4).to(tl.float32) * s + mn, x_ptr.dtype.element_ty)
            acc += dot(xa, wa, DOT_FP32) + dot(xb, wb, DOT_FP32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * sy_m + rn[None, :], round_to(acc, y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


def _check_group(K: int, group_size: int) -> None:
    if group_size < 32 or group_size & (group_size - 1) or K % group_size:
        raise ValueError(f"group_size must be a power of two >= 32 (tl.dot needs >= 16 per half) dividing "
                         f"K = {K}, got {group_size}")


def pack_int4(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes q [N, K] in 0..15 -> [N, K/2] uint8, byte j of a group = q[j] | q[j + group_size/2] << 4."""
    N, K = q.shape
    _check_group(K, group_size)
    halves = q.to(torch.uint8).view(N, K // group_size, 2, group_size // 2)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of `pack_int4`: [N, K/2] uint8 -> codes [N, K] uint8."""
    N, K = packed.shape[0], packed.shape[1] * 2
    _check_group(K, group_size)
    b = packed.view(N, K // group_size, 1, group_size // 2)
    return torch.cat([b & 0x0F, b >> 4], dim=2).reshape(N, K)


def quantize_int4(
    w: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] -> (packed [N, K/2] uint8, scale [N, K/group] bf16, min [N, K/group] bf16).

    Codes are rounded against the stored (bf16) scale and min, so the grid the kernel dequantises is the one
    the codes were chosen on: each weight is off by at most scale/2 plus the bf16 rounding of its group's
    range ends (2^-9 of them)."""
    if w.dim() != 2:
        raise ValueError(f"weights must be [N, K], got {tuple(w.shape)}")
    N, K = w.shape
    _check_group(K, group_size)
    wg = w.float().view(N, K // group_size, group_size)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale, mins = ((hi - lo) / 15).bfloat16(), lo.bfloat16()
    s = scale.float()
    s = torch.where(s > 0, s, torch.ones_like(s))  # a constant group: every code 0
    q = torch.round((wg - mins.float()[..., None]) / s[..., None]).clamp_(0, 15)
    return pack_int4(q.view(N, K), group_size), scale, mins


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] float32 weights of (packed, scale, min)."""
    q = unpack_int4(packed, group_size).float()
    N, K = q.shape
    w = q.view(N, K // group_size, group_size) * scale.float()[..., None] + mins.float()[..., None]
    return w.view(N, K)


def _check(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int,
           bias: torch.Tensor | None) -> None:
    if packed.dim() != 2 or packed.dtype != torch.uint8 or x.shape[-1] != 2 * packed.shape[1]:
        raise ValueError(f"x [..., K] and packed uint8 [N, K/2] expected, got x {tuple(x.shape)}, "
                         f"packed {packed.dtype} {tuple(packed.shape)}")
    N, K = packed.shape[0], x.shape[-1]
    _check_group(K, group_size)
    if scale.shape != (N, K // group_size) or mins.shape != scale.shape:
        raise ValueError(f"scale and min must be [N, K/group] = [{N}, {K // group_size}], got "
                         f"{tuple(scale.shape)}, {tuple(mins.shape)}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must be [{N}], got {tuple(bias.shape)}")


def int4_matmul_reference(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int = 128,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager reference: x [..., K] -> [..., N] in x's dtype, computed in float32 from the dequantised weights."""
    _check(x, packed, scale, mins, group_size, bias)
    y = x.float() @ dequantize_int4(packed, scale, mins, group_size).T
    return (y if bias is None else y + bias.float()).to(x.dtype)


def int4_matmul_triton(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int = 128,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference."""
    require_triton("int4_matmul")
    _check(x, packed, scale, mins, group_size, bias)
    N, K = packed.shape[0], x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    packed, scale, mins = packed.contiguous(), scale.contiguous(), mins.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_m = 16 if M <= 16 else 64
    block_n = 32 if M <= 16 else 64
    if M and N:
        _int4_matmul_kernel[(triton.cdiv(M, block_m), triton.cdiv(N, block_n))](
            x2, packed, scale, mins, y if bias is None else bias.contiguous(), y, M, N, K,
            x2.stride(0), packed.stride(0), scale.stride(0), y.stride(0), HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, HALF=group_size // 2, DOT_FP32=interpreting(),
        )
    return y.view(*x.shape[:-1], N)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int = 128,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ W^T (+ bias [N]) with W from `quantize_int4` -> [..., N] in x's dtype: Triton on CUDA,
    the eager reference elsewhere."""
    if use_triton(x):
        return int4_matmul_triton(x, packed, scale, mins, group_size, bias)
    return int4_matmul_reference(x, packed, scale, mins, group_size, bias)
