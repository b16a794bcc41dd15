"""Rotary embedding of q and k in place, plain RoPE or three-section M-RoPE, angles from integer positions.

Layout (rotate-half, as the Hugging Face checkpoints): for frequency i < D/2 the pair (x[i], x[i + D/2])
is rotated by angle pos * inv_freq[i]. With M-RoPE (Qwen2.5-Omni's TMRoPE) the D/2 frequencies are cut into
`mrope_section` = (s_t, s_h, s_w) consecutive blocks, block a taking its position from axis a of
positions [3, B, T]; plain positions [B, T] use one axis for all. Interleaved M-RoPE (Qwen3-Omni) assigns
frequency i to H when i % 3 == 1 and i < 3 s_h, to W when i % 3 == 2 and i < 3 s_w, to T otherwise
(omni/model/layers/rope.py `mrope_axes`). As omni/model/layers/rope.py does, angles are
formed and their cos/sin evaluated in float64 from the integer positions (a session hours long reaches
positions ~1e6, where a float32 angle is off by ~0.06 rad), then rounded to float32; the rotation itself
runs in float32 and rounds once to the tensor's dtype.

The kernel also writes, when asked, the query rotated to positions - sink_shift: the copy with which our
KV cache's attention plan scores the sinks once the ring has wrapped (omni/model/lm/kv_cache.py), saved from the same
read of q before q is rotated in place.
"""

import torch

from omni.kernels._triton import next_pow2, require_triton, round_to, tl, triton, use_triton

if triton is not None:

    @triton.jit
    def _rotate_heads(src, src_stride_h, dst, dst_stride_h, n_heads, cos, sin,
                      HALF, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
        h = tl.arange(0, BLOCK_H)[:, None]
        i = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < n_heads) & (i < HALF)
        x1 = tl.load(src + h * src_stride_h + i, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + h * src_stride_h + i + HALF, mask=mask, other=0.0).to(tl.float32)
        c, s = cos[None, :], sin[None, :]
        tl.store(dst + h * dst_stride_h + i, round_to(x1 * c - x2 * s, dst.dtype.element_ty), mask=mask)
        tl.store(dst + h * dst_stride_h + i + HALF, round_to(x2 * c + x1 * s, dst.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_qk_kernel(
        q_ptr, k_ptr, qs_ptr, pos_ptr, shift_ptr, inv_freq_ptr,
        T, H, HKV, HALF, SEC0, SEC01,
        sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqs_b, sqs_t, sqs_h, sp_axis, sp_b, sp_t, ss_b, ss_t,
        HAS_SINK: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        b, t = pid // T, pid % T
        i = tl.arange(0, BLOCK_HALF)
        imask = i < HALF
        if INTERLEAVED:  # SEC0, SEC01 carry 3 s_h and 3 s_w here
            axis = ((i % 3 == 1) & (i < SEC0)).to(tl.int64) + 2 * ((i % 3 == 2) & (i < SEC01)).to(tl.int64)
        else:  # consecutive sections: SEC0 = s_t, SEC01 = s_t + s_h
            axis = (i >= SEC0).to(tl.int64) + (i >= SEC01).to(tl.int64)
        pos = tl.load(pos_ptr + axis * sp_axis + b * sp_b + t * sp_t, mask=imask, other=0)
        inv = tl.load(inv_freq_ptr + i, mask=imask, other=0.0)
        q = q_ptr + b * sq_b + t * sq_t
        if HAS_SINK:  # before q is overwritten below
            shifted = (pos - tl.load(shift_ptr + b * ss_b + t * ss_t)).to(tl.float64) * inv
            _rotate_heads(q, sq_h, qs_ptr + b * sqs_b + t * sqs_t, sqs_h, H,
                          tl.cos(shifted).to(tl.float32), tl.sin(shifted).to(tl.float32), HALF, BLOCK_H, BLOCK_HALF)
        ang = pos.to(tl.float64) * inv
        cos, sin = tl.cos(ang).to(tl.float32), tl.sin(ang).to(tl.float32)
        _rotate_heads(q, sq_h, q, sq_h, H, cos, sin, HALF, BLOCK_H, BLOCK_HALF)
        k = k_ptr + b * sk_b + t * sk_t
        _rotate_heads(k, sk_h, k, sk_h, HKV, cos, sin, HALF, BLOCK_H, BLOCK_HALF)


def _sections(positions: torch.Tensor, half: int, mrope_section: tuple[int, ...] | None,
              interleaved: bool = False) -> tuple[int, int]:
    """The kernel's two section bounds: (end of section 0, end of section 1) in frequency indices, or
    (3 s_h, 3 s_w) for interleaved sections."""
    if positions.dim() == 2:
        return half, half
    if positions.dim() != 3 or positions.shape[0] != 3:
        raise ValueError(f"positions must be [B, T] or [3, B, T], got {tuple(positions.shape)}")
    if mrope_section is None or len(mrope_section) != 3 or sum(mrope_section) != half:
        raise ValueError(f"three-axis positions need mrope_section of 3 widths summing to head_dim/2 = {half}, "
                         f"got {mrope_section}")
    if interleaved:
        return 3 * mrope_section[1], 3 * mrope_section[2]
    return mrope_section[0], mrope_section[0] + mrope_section[1]


def rope_cos_sin_reference(
    positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: tuple[int, ...] | None = None,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, D] float32 for positions [B, T] or [3, B, T] and inv_freq [D/2] (float64)."""
    half = inv_freq.shape[0]
    s0, s01 = _sections(positions, half, mrope_section, interleaved)
    pos = positions if positions.dim() == 3 else positions[None]
    i = torch.arange(half, device=pos.device)
    if interleaved and pos.shape[0] == 3:  # the kernel's rule, from its two bounds (3 s_h, 3 s_w)
        axis = ((i % 3 == 1) & (i < s0)).long() + 2 * ((i % 3 == 2) & (i < s01)).long()
    else:
        axis = (i >= s0).long() + (i >= s01).long()
    per_freq = pos.movedim(0, -1)[..., axis]  # [B, T, D/2]: the axis each frequency reads
    ang = per_freq.double() * inv_freq.double().to(pos.device)
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().float(), emb.sin().float()


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, D] rotated by cos/sin [B, T, D] as the model does: tables cast to x's dtype, then
    x * cos + rotate_half(x) * sin in x's dtype (rotate_half(x) = (-x2, x1) = roll by D/2 with the sign
    folded into sin)."""
    half = x.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).to(x.dtype)[:, :, None]
    return torch.addcmul(x * cos.to(x.dtype)[:, :, None], x.roll(half, dims=-1), signed_sin)


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
           q_sink: torch.Tensor | None, sink_shift: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q [B, T, H, D] and k [B, T, Hkv, D] expected, got {tuple(q.shape)}, {tuple(k.shape)}")
    B, T, _, D = q.shape
    if D % 2 or inv_freq.shape != (D // 2,):
        raise ValueError(f"inv_freq must be [head_dim/2] = [{D // 2}] (even head_dim), got {tuple(inv_freq.shape)}")
    if positions.shape[-2:] != (B, T) or positions.is_floating_point():
        raise ValueError(f"positions must be integer [B, T] or [3, B, T] with B, T = {B}, {T}; "
                         f"got {positions.dtype} {tuple(positions.shape)}")
    if (q_sink is None) != (sink_shift is None):
        raise ValueError("q_sink and sink_shift go together")
    if q_sink is not None and (q_sink.shape != q.shape or q_sink.dtype != q.dtype):
        raise ValueError(f"q_sink must be like q {tuple(q.shape)} {q.dtype}, got {tuple(q_sink.shape)} {q_sink.dtype}")
    if sink_shift is not None and sink_shift.shape not in ((T,), (B, T)):
        raise ValueError(f"sink_shift must be [T] or [B, T] = [{T}] or [{B}, {T}], got {tuple(sink_shift.shape)}")


def rope_qk_reference_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
    mrope_section: tuple[int, ...] | None = None, q_sink: torch.Tensor | None = None,
    sink_shift: torch.Tensor | None = None, interleaved: bool = False,
) -> None:
    """Eager reference of `rope_qk_` (same contract)."""
    _check(q, k, positions, inv_freq, q_sink, sink_shift)
    if q_sink is not None and sink_shift is not None:
        shifted = positions - sink_shift.expand(positions.shape[-2:])
        q_sink.copy_(rope_reference(q, *rope_cos_sin_reference(shifted, inv_freq, mrope_section, interleaved)))
    cos, sin = rope_cos_sin_reference(positions, inv_freq, mrope_section, interleaved)
    q.copy_(rope_reference(q, cos, sin))
    k.copy_(rope_reference(k, cos, sin))


def rope_qk_triton_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
    mrope_section: tuple[int, ...] | None = None, q_sink: torch.Tensor | None = None,
    sink_shift: torch.Tensor | None = None, interleaved: bool = False,
) -> None:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as `rope_qk_`."""
    require_triton("rope_qk_")
    _check(q, k, positions, inv_freq, q_sink, sink_shift)
    for name, t in (("q", q), ("k", k), ("q_sink", q_sink)):
        if t is not None and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (rotated in place), strides {t.stride()}")
    B, T, H, D = q.shape
    s0, s01 = _sections(positions, D // 2, mrope_section, interleaved)
    pos = positions if positions.dim() == 3 else positions[None]
    qs = q if q_sink is None else q_sink
    shift = positions.new_zeros(1, 1) if sink_shift is None else sink_shift
    shift = shift if shift.dim() == 2 else shift[None]
    if B * T:
        _rope_qk_kernel[(B * T,)](
            q, k, qs, pos, shift, inv_freq.to(torch.float64).contiguous(),
            T, H, k.shape[2], D // 2, s0, s01,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            qs.stride(0), qs.stride(1), qs.stride(2), pos.stride(0) if pos.shape[0] == 3 else 0,
            pos.stride(1), pos.stride(2), shift.stride(0) if shift.shape[0] == B else 0, shift.stride(1),
            HAS_SINK=q_sink is not None, INTERLEAVED=interleaved and pos.shape[0] == 3,
            BLOCK_H=next_pow2(max(H, k.shape[2])), BLOCK_HALF=next_pow2(D // 2),
        )


def rope_qk_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
    mrope_section: tuple[int, ...] | None = None, q_sink: torch.Tensor | None = None,
    sink_shift: torch.Tensor | None = None, interleaved: bool = False,
) -> None:
    """Rotate q [B, T, H, D] and k [B, T, Hkv, D] in place (views into the fused qkv output are fine).

    positions: [B, T] or [3, B, T] integers; inv_freq: [D/2] (float64, `rope_inv_freq`); mrope_section:
    three widths summing to D/2 for three-axis positions, consecutive or (`interleaved`) interleaved. With
    q_sink [B, T, H, D] and sink_shift [T] or
    [B, T], q_sink receives q rotated by positions - sink_shift (every axis shifted). Triton on CUDA, the
    eager reference elsewhere.
    """
    if use_triton(q):
        rope_qk_triton_(q, k, positions, inv_freq, mrope_section, q_sink, sink_shift, interleaved)
    else:
        rope_qk_reference_(q, k, positions, inv_freq, mrope_section, q_sink, sink_shift, interleaved)
