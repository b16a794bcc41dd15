"""Rotary position embeddings: plain RoPE and multimodal RoPE (M-RoPE, three position axes).

M-RoPE assigns each of the head_dim // 2 frequencies to one position axis (`mrope_axes`): in consecutive
sections (Qwen2.5-Omni, `mrope_section` [16, 24, 24]: T, then H, then W) or interleaved (Qwen3-Omni,
[24, 20, 20]: frequency i goes to H when i % 3 == 1 and i < 3 * s_h, to W when i % 3 == 2 and i < 3 * s_w,
to T otherwise, so H takes 1, 4, ..., 58, W takes 2, 5, ..., 59 and T the rest).

Angles are computed in float64 from integer positions, so a session that runs for hours (positions in the
millions) keeps full precision; cos/sin are then cast to float32. The rotation uses the "rotate half"
layout of the Hugging Face checkpoints (GGUF's interleaved q/k rows are un-permuted at load time).
"""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """[head_dim // 2] inverse frequencies, computed as the reference does (float32), kept in float64."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return (1.0 / (theta**exponent)).double()


def mrope_axes(half: int, mrope_section: tuple[int, ...], interleaved: bool = False) -> torch.Tensor:
    """[half] int64: the position axis (0 T, 1 H, 2 W) each rotary frequency takes its angle from."""
    if len(mrope_section) != 3 or sum(mrope_section) != half:
        raise ValueError(f"mrope_section must be 3 widths summing to head_dim/2 = {half}, got {list(mrope_section)}")
    i = torch.arange(half)
    if interleaved:
        h = (i % 3 == 1) & (i < 3 * mrope_section[1])
        w = (i % 3 == 2) & (i < 3 * mrope_section[2])
        return h.long() + 2 * w.long()
    return (i >= mrope_section[0]).long() + (i >= mrope_section[0] + mrope_section[1]).long()


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: tuple[int, ...] | None = None,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, T, head_dim] (float32) for positions [B, T] or [3, B, T].

    With three axes (temporal, height, width), each frequency takes its angle from the axis `mrope_axes`
    gives it (consecutive or interleaved sections); three equal axes give exactly plain RoPE.
    """
    if positions.dim() == 2:
        ang = positions.double()[..., None] * inv_freq.to(positions.device)  # [B, T, D/2]
    elif positions.dim() == 3 and positions.shape[0] == 3:
        if mrope_section is None:
            raise ValueError("three-axis positions need a model with mrope_section")
        all_ang = positions.double()[..., None] * inv_freq.to(positions.device)  # [3, B, T, D/2]
        axes = mrope_axes(inv_freq.shape[0], mrope_section, interleaved).to(positions.device)
        ang = all_ang.gather(0, axes.expand(1, *all_ang.shape[1:]))[0]
    else:
        raise ValueError(f"positions must be [B, T] or [3, B, T], got shape {tuple(positions.shape)}")
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().float(), emb.sin().float()


def fold_rope(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, D] -> tables for `apply_folded_rope`, broadcastable over heads: [B, 1, T, D] each.

    rotate_half(x) = (-x2, x1) = roll(x, D/2) * (-1 | +1), so the sign goes into the sin table once per
    forward and every rotation is then three kernels (mul, roll, addcmul)."""
    half = cos.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos.to(dtype)[:, None], signed_sin.to(dtype)[:, None]


def apply_folded_rope(x: torch.Tensor, folded: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [B, H, T, D] by tables from `fold_rope`."""
    cos, signed_sin = folded
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by cos/sin [B, T, D] (rotate-half layout); computed in x's dtype."""
    return apply_folded_rope(x, fold_rope(cos, sin, x.dtype))
