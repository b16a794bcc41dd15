"""Mixture-of-experts expert FFNs as grouped matmuls: each expert multiplies only the tokens routed to it.

Routing (`moe_route`): the N x top_k (token, expert) pairs are sorted by expert (stable, so each expert's
rows keep token order), giving `order` (pair index per sorted row) and `offsets` [E + 1] (expert e owns
sorted rows offsets[e] .. offsets[e + 1]). `grouped_matmul(x, w, offsets)` then computes, for every expert
e, rows offsets[e]:offsets[e + 1] of x times w[e]^T: one matmul per expert over its whole token group, never
a loop over experts per token, and experts that got no token cost nothing. `moe_experts` chains it:
gather rows -> grouped gate_up -> SiLU gate -> grouped down -> scale by the router weight -> index_add back.

The Triton kernel tiles the sorted rows per expert: tile t belongs to the expert e whose tile range holds t
(tiles_per_expert = ceil(count / BLOCK_M), found on the device with searchsorted, so nothing is read back
to the host and the launch grid is the bound ceil(N*k / BLOCK_M) + E); each program computes one
[BLOCK_M, BLOCK_N] tile of x[rows] @ w[e]^T with a float32 accumulator and rounds once. Unused tiles of the
bound run no loop iteration and store nothing. The eager reference (`grouped_matmul_reference`, the CPU path) runs
one torch matmul per expert that has tokens.

Weight-only quantised experts (`--quant`): `grouped_matmul` also takes int8 weights [E, N, K] with a per-expert,
per-output-channel float32 scale [E, N] (omni/kernels/int8_matmul.py's format per expert): the kernel converts each
int8 tile to the activation dtype (exact) and scales the float32 accumulator once per output; the reference
computes in float32, as int8_matmul_reference does. `Int8ExpertWeights` and `Int4ExpertWeights` hold an expert
stack in the two formats and are what `moe_experts` takes in place of a float tensor; int4 (group-wise scale and
minimum along K) runs one omni/kernels/int4_matmul.py call per expert with tokens (its Triton kernel on CUDA).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omni.kernels._triton import dot, interpreting, next_pow2, require_triton, round_to, tl, triton, use_triton
from omni.kernels.int4_matmul import dequantize_int4, int4_matmul, quantize_int4
from omni.kernels.int8_matmul import quantize_int8
from omni.kernels.silu_gate import silu_gate

if triton is not None:

    @triton.jit
    def _grouped_matmul_kernel(
        x_ptr, w_ptr, scale_ptr, y_ptr, tile_expert_ptr, tile_row_ptr, offsets_ptr, N, K, E,
        sx_m, sw_e, sw_n, sy_m, ss_e,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
        SCALED: tl.constexpr,
    ):
        t = tl.program_id(0)
        e = tl.load(tile_expert_ptr + t)  # E for tiles past the last expert's
        row0 = tl.load(tile_row_ptr + t)
        end = tl.load(offsets_ptr + tl.minimum(e + 1, E))
        end = tl.where(e < E, end, 0)
        rm = row0 + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < end
        w_base = w_ptr + tl.minimum(e, E - 1).to(tl.int64) * sw_e  # a valid expert even for unused tiles
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        k_end = tl.where(e < E, K, 0)  # tiles past the last expert's read nothing (their store is masked off)
        for k0 in range(0, k_end, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None].to(tl.int64) * sx_m + kk[None, :],
                        mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)
            w = tl.load(w_base + rn[None, :].to(tl.int64) * sw_n + kk[:, None],
                        mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)  # [BLOCK_K, BLOCK_N]
            if SCALED:  # int8 codes: exact in the activation dtype
                w = w.to(tl.float32).to(x_ptr.dtype.element_ty)
            acc += dot(x, w, DOT_FP32)
        if SCALED:
            s_base = scale_ptr + tl.minimum(e, E - 1).to(tl.int64) * ss_e
            acc = acc * tl.load(s_base + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * sy_m + rn[None, :], round_to(acc, y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & (rn[None, :] < N))


def _check(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    if x.dim() != 2 or w.dim() != 3 or x.shape[1] != w.shape[2]:
        raise ValueError(f"x [M, K] and w [E, N, K] expected, got {tuple(x.shape)}, {tuple(w.shape)}")
    if scale is not None:
        if w.dtype != torch.int8 or scale.shape != w.shape[:2]:
            raise ValueError(f"scaled weights must be int8 [E, N, K] with a scale [E, N], got {w.dtype} "
                             f"{tuple(w.shape)} and {tuple(scale.shape)}")
    elif x.dtype != w.dtype:
        raise ValueError(f"x and w must have one dtype, got {x.dtype} and {w.dtype}")
    if offsets.shape != (w.shape[0] + 1,) or offsets.is_floating_point():
        raise ValueError(f"offsets must be integer [E + 1] = [{w.shape[0] + 1}], got {offsets.dtype} "
                         f"{tuple(offsets.shape)}")


def grouped_matmul_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor,
                             scale: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference: y[offsets[e]:offsets[e+1]] = x[same rows] @ w[e]^T, one matmul per expert with rows;
    x [M, K] (rows sorted by expert), w [E, N, K], offsets [E + 1] (offsets[E] == M) -> y [M, N] in x's dtype.
    With `scale` [E, N], w is int8 and the weight is w[e] * scale[e][:, None], computed in float32.
    Reads the offsets on the host (a sync on a GPU; the Triton launcher needs none)."""
    _check(x, w, offsets, scale)
    y = x.new_empty(x.shape[0], w.shape[1])
    bounds = offsets.tolist()
    if bounds[-1] != x.shape[0]:
        raise ValueError(f"offsets end at {bounds[-1]} but x has {x.shape[0]} rows")
    for e, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if b > a and scale is not None:
            y[a:b] = ((x[a:b].float() @ w[e].float().T) * scale[e].float()).to(x.dtype)
        elif b > a:
            torch.mm(x[a:b], w[e].T, out=y[a:b])
    return y


def grouped_matmul_triton(
    x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, block_m: int | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference.
    block_m: rows per tile (a power of two >= 16; default by the average rows per expert)."""
    require_triton("grouped_matmul")
    _check(x, w, offsets, scale)
    M, K = x.shape
    E, N, _ = w.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if not (M and N):
        return y
    if block_m is None:
        block_m = 16 if M <= 16 * E else 64  # decode: a few rows per expert; prefill: long groups
    offsets = offsets.to(device=x.device, dtype=torch.int64)
    counts = offsets[1:] - offsets[:-1]
    tile_end = torch.cumsum((counts + block_m - 1) // block_m, 0)  # [E] first tile past expert e's
    n_tiles = triton.cdiv(M, block_m) + E  # an upper bound on sum(ceil(count / block_m)): no host read
    t = torch.arange(n_tiles, device=x.device)
    tile_expert = torch.searchsorted(tile_end, t, right=True)  # E past the last tile
    e_clamped = tile_expert.clamp(max=E - 1)
    tile_start = tile_end[e_clamped] - (counts[e_clamped] + block_m - 1) // block_m
    tile_row = offsets[e_clamped] + (t - tile_start) * block_m
    block_n = 32 if M <= 16 * E else 64
    s = y if scale is None else scale.float().contiguous()  # (any pointer when unscaled: never read)
    _grouped_matmul_kernel[(n_tiles, triton.cdiv(N, block_n))](
        x, w, s, y, tile_expert, tile_row, offsets, N, K, E, x.stride(0), w.stride(0), w.stride(1), y.stride(0),
        s.stride(0) if scale is not None else 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=min(64, max(16, next_pow2(K))), DOT_FP32=interpreting(),
        SCALED=scale is not None,
    )
    return y


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] rows sorted by expert, w [E, N, K] (int8 with `scale` [E, N]), offsets [E + 1] -> [M, N]:
    Triton on CUDA, the eager reference elsewhere."""
    if use_triton(x):
        return grouped_matmul_triton(x, w, offsets, scale=scale)
    return grouped_matmul_reference(x, w, offsets, scale)


@dataclass
class Int8ExpertWeights:
    """An expert stack [E, N, K] as int8 codes with a float32 scale per expert and output channel [E, N]."""

    q: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "Int8ExpertWeights":
        pairs = [quantize_int8(w[e]) for e in range(w.shape[0])]
        return cls(torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs]))

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def grouped(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return grouped_matmul(x, self.q, offsets, self.scale)

    def dequantized(self) -> torch.Tensor:
        return self.q.float() * self.scale.float()[:, :, None]


@dataclass
class Int4ExpertWeights:
    """An expert stack [E, N, K] in omni/kernels/int4_matmul.py's format per expert: packed [E, N, K/2] uint8,
    scale and mins [E, N, K/group]."""

    packed: torch.Tensor
    scale: torch.Tensor
    mins: torch.Tensor
    group_size: int

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int) -> "Int4ExpertWeights":
        parts = [quantize_int4(w[e], group_size) for e in range(w.shape[0])]
        packed, scale, mins = (torch.stack([p[i] for p in parts]) for i in range(3))
        return cls(packed, scale, mins, group_size)

    @property
    def shape(self) -> torch.Size:
        E, N, half = self.packed.shape
        return torch.Size((E, N, 2 * half))

    def grouped(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """One int4_matmul per expert with rows (reads the offsets on the host)."""
        y = x.new_empty(x.shape[0], self.packed.shape[1])
        bounds = offsets.tolist()
        for e, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if b > a:
                y[a:b] = int4_matmul(x[a:b], self.packed[e], self.scale[e], self.mins[e], self.group_size)
        return y

    def dequantized(self) -> torch.Tensor:
        return torch.stack([dequantize_int4(self.packed[e], self.scale[e], self.mins[e], self.group_size)
                            for e in range(self.packed.shape[0])])


ExpertWeights = torch.Tensor | Int8ExpertWeights | Int4ExpertWeights


def moe_route(top_idx: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [N*k], offsets [E + 1]) for top_idx [N, k]: the flat (token, slot) pair indices sorted by
    expert (stable) and where each expert's rows start; token of sorted row r = order[r] // k."""
    flat = top_idx.reshape(-1)
    if flat.numel() and flat.device.type == "cpu" and not (0 <= int(flat.min()) and int(flat.max()) < num_experts):
        raise ValueError(f"expert index out of range [0, {num_experts})")
    order = torch.sort(flat, stable=True).indices
    # scatter_add, not bincount: CUDA's bincount reads the maximum back to the host (no graph capture)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return order, offsets


MatmulFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def moe_experts(
    x: torch.Tensor, gate_up: ExpertWeights, down: ExpertWeights, top_idx: torch.Tensor, top_w: torch.Tensor,
    matmul: MatmulFn = grouped_matmul,
) -> torch.Tensor:
    """sum_j top_w[n, j] * down[e] @ (silu(gate) * up)(gate_up[e] @ x[n]) with e = top_idx[n, j].

    x [N, C]; gate_up [E, 2I, C] (gate rows first, then up: transformers' fused layout); down [E, C, I];
    top_idx [N, k] int; top_w [N, k] (in x's dtype). `matmul`: grouped_matmul (dispatch) or one of its
    implementations, for float weights; quantised ones (`Int8ExpertWeights`, `Int4ExpertWeights`) run their own
    grouped matmul. Returns [N, C] in x's dtype."""
    N, C = x.shape
    E, k = gate_up.shape[0], top_idx.shape[1]
    if top_idx.shape != top_w.shape or top_idx.shape[0] != N:
        raise ValueError(f"top_idx and top_w must both be [N, k] with N = {N}, got {tuple(top_idx.shape)}, "
                         f"{tuple(top_w.shape)}")
    if gate_up.shape[2] != C or down.shape != (E, C, gate_up.shape[1] // 2):
        raise ValueError(f"gate_up [E, 2I, {C}] and down [E, {C}, I] expected, got {tuple(gate_up.shape)}, "
                         f"{tuple(down.shape)}")
    order, offsets = moe_route(top_idx, E)
    token = order // k
    h = _grouped(matmul, x[token], gate_up, offsets)  # [N*k, 2I]
    y = _grouped(matmul, silu_gate(h), down, offsets)  # [N*k, C]
    y = y * top_w.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(x).index_add_(0, token, y)


def _grouped(matmul: MatmulFn, x: torch.Tensor, w: ExpertWeights, offsets: torch.Tensor) -> torch.Tensor:
    return matmul(x, w, offsets) if isinstance(w, torch.Tensor) else w.grouped(x, offsets)


def moe_experts_naive(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor
) -> torch.Tensor:
    """The definition, token by token and slot by slot in float32 (tests only: slow)."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    I = down.shape[2]
    for n in range(x.shape[0]):
        for j in range(top_idx.shape[1]):
            e = int(top_idx[n, j])
            h = gate_up[e].float() @ x[n].float()
            out[n] += float(top_w[n, j]) * (down[e].float() @ (F.silu(h[:I]) * h[I:]))
    return out.to(x.dtype)
