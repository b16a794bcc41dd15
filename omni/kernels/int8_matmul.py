"""Weight-only int8 matmul for the projections: y[M, N] = x[M, K] @ (q[N, K] * scale[N])^T (+ bias).

Per-output-channel symmetric quantisation: scale = max|w_row| / 127, q = round(w / scale) in [-127, 127]
(-128 unused, so the grid is symmetric). A 7B model's projections go from 2 bytes to ~1 byte per weight
(plus 4 bytes per output row), halving what each decode step reads.

The kernel converts each int8 tile to the activation dtype (exact: |q| <= 127 fits bf16's 8 significant
bits) and accumulates in float32, so bf16 products are exact and kernel and reference differ only by
summation order; the scale is applied once per output. Small M (decode: M = batch rows) is padded to
tl.dot's 16-row minimum; the weight read dominates, and x is re-read per N-tile from cache.
"""

import torch

from omni.kernels._triton import dot, interpreting, next_pow2, require_triton, round_to, tl, triton, use_triton

if triton is not None:

    @triton.jit
    def _int8_matmul_kernel(
        x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, sx_m, sw_n, sy_m,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_FP32: tl.constexpr,
    ):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None].to(tl.int64) * sx_m + kk[None, :],
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            w = tl.load(w_ptr + rn[None, :].to(tl.int64) * sw_n + kk[:, None],
                        mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)  # [BLOCK_K, BLOCK_N]
            acc += dot(x, w.to(tl.float32).to(x_ptr.dtype.element_ty), DOT_FP32)
        y = acc * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * sy_m + rn[None, :], round_to(y, y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] (bf16/fp16/fp32) -> (q [N, K] int8, scale [N] float32) with w ~= q * scale[:, None]."""
    if w.dim() != 2:
        raise ValueError(f"weights must be [N, K], got {tuple(w.shape)}")
    wf = w.float()
    scale = wf.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: q = 0, any scale
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, K] float32 weights of (q, scale)."""
    return q.float() * scale.float()[:, None]


def _check(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
    if q.dim() != 2 or q.dtype != torch.int8 or x.shape[-1] != q.shape[1]:
        raise ValueError(f"x [..., K] and int8 q [N, K] expected, got x {tuple(x.shape)}, q {q.dtype} {tuple(q.shape)}")
    N = q.shape[0]
    if scale.shape != (N,) or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"scale (and bias) must be [{N}], got {tuple(scale.shape)}"
                         + ("" if bias is None else f", {tuple(bias.shape)}"))


def int8_matmul_reference(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Eager reference: x [..., K] -> [..., N] in x's dtype, computed in float32."""
    _check(x, q, scale, bias)
    y = (x.float() @ q.float().T) * scale.float()
    return (y if bias is None else y + bias.float()).to(x.dtype)


def int8_matmul_triton(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference."""
    require_triton("int8_matmul")
    _check(x, q, scale, bias)
    N, K = q.shape
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    q = q if q.stride(-1) == 1 else q.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_m = 16 if M <= 16 else 64
    block_n = 32 if M <= 16 else 64  # decode: more, narrower tiles (3584 outputs -> 112 programs)
    if M and N:
        _int8_matmul_kernel[(triton.cdiv(M, block_m), triton.cdiv(N, block_n))](
            x2, q, scale.float().contiguous(), y if bias is None else bias.contiguous(), y, M, N, K,
            x2.stride(0), q.stride(0), y.stride(0), HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=min(128, max(16, next_pow2(K))), DOT_FP32=interpreting(),
        )
    return y.view(*x.shape[:-1], N)


def int8_matmul(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] @ (q [N, K] int8 * scale [N])^T (+ bias [N]) -> [..., N] in x's dtype: Triton on CUDA,
    the eager reference elsewhere."""
    if use_triton(x):
        return int8_matmul_triton(x, q, scale, bias)
    return int8_matmul_reference(x, q, scale, bias)
