"""The Thinker's vision encoder: the Qwen2.5-VL ViT as shipped in Qwen2.5-Omni.

Input: flattened 2x14x14 patches (see `vision_preprocess.patchify`) of one temporal patch = 2 frames.
Conv3d patch embedding -> 32 blocks (RMSNorm, attention with separate q/k/v and 2-D rotary positions,
SwiGLU MLP with bias) -> merger (RMSNorm, 2x2 patches concatenated, MLP) -> one token per 28x28 px.
Most blocks attend inside 112-px windows (4x4 merged tokens = 8x8 patches = 64 patches); the blocks
in `fullatt_block_indexes` attend over the whole frame.

Every attention span (window or full frame) lies inside one temporal patch, so temporal patches are
independent: a video is encoded patch by patch as each second frame arrives, and the result equals the
offline encoding. Windows are gathered into a padded [windows, 64] layout with a key mask instead of
permuting the whole sequence (as the reference does); attention is permutation-equivariant, so only the
float summation order differs.

Weights load from the checkpoint's `thinker.visual.*` tensors (prefix removed) by `load_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.encoders.config import Qwen3VisionConfig, VisionEncoderConfig
from omni.model.encoders.vision_preprocess import VisionInputError, patchify
from omni.model.encoders.weights import load_encoder_state_dict
from omni.model.layers.norm import RMSNorm


@dataclass
class FrameLayout:
    """Per-frame-size constants: rotary tables and the window gather. Computed once per stream/grid."""

    gh: int  # patches per column (height / 14)
    gw: int
    cos: torch.Tensor  # [N, head_dim] rotary cos per patch (merge-block order), float32
    sin: torch.Tensor
    window_gather: torch.Tensor  # [W * S] patch index per padded window slot; N for padding
    window_valid: torch.Tensor  # [W, S] bool: slot holds a patch
    window_scatter: torch.Tensor  # [N] slot of each patch in the flattened padded layout


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def merge_block_coords(gh: int, gw: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of each patch of a gh x gw frame in merge-block order: block row, block col, row in
    block, col in block (the order the processors emit patches in)."""
    lh, lw = gh // m, gw // m
    rows = torch.arange(gh).view(lh, m, 1, 1).expand(lh, m, lw, m).permute(0, 2, 1, 3).flatten()
    cols = torch.arange(gw).view(1, 1, lw, m).expand(lh, m, lw, m).permute(0, 2, 1, 3).flatten()
    return rows, cols


def rotary_angles(gh: int, gw: int, m: int, head_dim: int, theta: float) -> torch.Tensor:
    """2-D rotary angles [N, head_dim] per patch in merge-block order (Qwen2.5-VL and Qwen3-VL share them):
    rows rotate the first quarter of each half, columns the second, laid out for rotate-half."""
    rows, cols = merge_block_coords(gh, gw, m)
    quarter = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, quarter, 2, dtype=torch.float32) / quarter))
    angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # [N, hd / 2]
    return torch.cat([angles, angles], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k [..., N, H, hd] by per-patch angles (cos/sin [N, 1, hd]), in float32."""
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


def frame_layout(cfg: VisionEncoderConfig, gh: int, gw: int, device: torch.device | None = None) -> FrameLayout:
    """Rotary angles and window membership for a frame of gh x gw patches, both in merge-block order."""
    m, ws = cfg.spatial_merge_size, cfg.window_tokens
    lh, lw = gh // m, gw // m  # merged-token grid
    angles = rotary_angles(gh, gw, m, cfg.head_dim, cfg.rope_theta)
    # windows of ws x ws merged tokens, row-major; each merged token is m*m consecutive patches
    nwh, nww = math.ceil(lh / ws), math.ceil(lw / ws)
    units = torch.full((nwh * ws, nww * ws), -1, dtype=torch.long)
    units[:lh, :lw] = torch.arange(lh * lw).view(lh, lw)
    units = units.view(nwh, ws, nww, ws).permute(0, 2, 1, 3).reshape(nwh * nww, ws * ws)
    slots = units[..., None] * (m * m) + torch.arange(m * m)  # [W, ws*ws, m*m]
    valid = (units >= 0)[..., None].expand_as(slots).reshape(nwh * nww, -1)
    n = gh * gw
    gather = torch.where(valid, slots.reshape(valid.shape), torch.full_like(valid, n, dtype=torch.long)).flatten()
    scatter = torch.empty(n, dtype=torch.long)
    scatter[gather[gather < n]] = torch.nonzero(gather < n).squeeze(1)
    return FrameLayout(gh, gw, angles.cos().to(device), angles.sin().to(device), gather.to(device),
                       valid.to(device), scatter.to(device))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, lay: FrameLayout, windowed: bool) -> torch.Tensor:  # [t, N, D]
        t, n, d = x.shape
        q, k, v = (p(x).view(t, n, self.num_heads, -1) for p in (self.q, self.k, self.v))
        cos, sin = lay.cos[:, None, :], lay.sin[:, None, :]  # [N, 1, hd], rotation in float32
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if not windowed:  # each temporal patch attends over its whole frame
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return self.proj(o.transpose(1, 2).reshape(t, n, d))
        w, s = lay.window_valid.shape
        pad = x.new_zeros(t, 1, self.num_heads, d // self.num_heads)

        def windows(z: torch.Tensor) -> torch.Tensor:  # [t, N, H, hd] -> [t * W, H, S, hd]
            z = torch.cat([z, pad], dim=1)[:, lay.window_gather]
            return z.view(t * w, s, self.num_heads, -1).transpose(1, 2)

        mask = lay.window_valid[:, None, None, :].repeat(t, 1, 1, 1)  # [t * W, 1, 1, S]: keys only
        o = F.scaled_dot_product_attention(windows(q), windows(k), windows(v), attn_mask=mask)
        o = o.transpose(1, 2).reshape(t, w * s, d)[:, lay.window_scatter]
        return self.proj(o)


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig, windowed: bool) -> None:
        super().__init__()
        self.windowed = windowed
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, lay: FrameLayout) -> torch.Tensor:  # [t, N, D]
        x = x + self.attn(self.norm1(x), lay, self.windowed)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv3d over (2, p, p) with equal stride = one matmul over flattened patches (C, frame, py, px); p is 14
    for Qwen2.5 (no bias) and 16 for Qwen3 (with a bias)."""

    def __init__(self, cfg: VisionEncoderConfig | Qwen3VisionConfig, bias: bool = False) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [N, C*2*p*p] -> [N, D]
        return F.linear(patches.to(self.proj.weight.dtype), self.proj.weight.flatten(1), self.proj.bias)


def check_grid(
    patches: torch.Tensor, grid: Sequence[int], cfg: VisionEncoderConfig | Qwen3VisionConfig
) -> tuple[int, int, int]:
    """(t, gh, gw) of one image or video's patches [t*gh*gw, patch_dim]; a VisionInputError when they disagree
    or the grid does not split into merge blocks."""
    t, gh, gw = (int(g) for g in grid)
    m = cfg.spatial_merge_size
    if gh % m or gw % m or min(t, gh, gw) <= 0:
        raise VisionInputError(f"grid {(t, gh, gw)} must be positive with h, w multiples of {m}")
    if patches.shape != (t * gh * gw, cfg.patch_dim):
        raise VisionInputError(
            f"expected patches [{t * gh * gw}, {cfg.patch_dim}] for grid {(t, gh, gw)}, got {tuple(patches.shape)}"
        )
    return t, gh, gw


def split_by_grid(
    patches: torch.Tensor, grid_thw: torch.Tensor | Sequence[Sequence[int]]
) -> list[tuple[torch.Tensor, tuple[int, int, int]]]:
    """The processor's concatenated pixel_values [sum t*h*w, patch_dim] as (patches, grid) per image/video."""
    rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else grid_thw
    grids = [(int(t), int(h), int(w)) for t, h, w in rows]
    sizes = [t * h * w for t, h, w in grids]
    if sum(sizes) != patches.shape[0]:
        raise VisionInputError(f"grid_thw covers {sum(sizes)} patches but {patches.shape[0]} were given")
    return list(zip(patches.split(sizes), grids))


def check_stream_size(height: int, width: int, cfg: VisionEncoderConfig | Qwen3VisionConfig) -> None:
    """Stream frames must tile into whole LLM tokens (image_factor px: 28 for Qwen2.5, 32 for Qwen3)."""
    f = cfg.image_factor
    if height % f or width % f or height < f or width < f:
        raise VisionInputError(f"stream frames must be positive multiples of {f} px, got {height}x{width}")


def check_frame(pending: torch.Tensor, frame: torch.Tensor) -> None:
    if tuple(frame.shape) != tuple(pending.shape):
        raise VisionInputError(f"frame of shape {tuple(frame.shape)}; this stream expects {tuple(pending.shape)}")


class PatchMerger(nn.Module):
    """RMSNorm, concatenate each 2x2 block of patches (4 consecutive rows), MLP to the Thinker's width."""

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        wide = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., N, D] -> [..., N / 4, out]
        x = self.ln_q(x)
        return self.mlp(x.reshape(*x.shape[:-2], -1, x.shape[-1] * 4))


@dataclass
class VisionEncoderState:
    """Per-video-stream state: the first frame of the temporal patch being filled, and the frame layout."""

    pending: torch.Tensor  # [C, H, W] preallocated, normalised
    layout: FrameLayout
    has_pending: bool = False
    n_patches: int = 0  # temporal patches encoded so far (TMRoPE t id = n_patches * 25 * seconds_per_grid)


class VisionEncoder(nn.Module):
    """Qwen2.5-VL ViT. Weights only; per-stream data lives in `VisionEncoderState`."""

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        full = set(cfg.fullatt_block_indexes)
        self.blocks = nn.ModuleList(VisionBlock(cfg, windowed=i not in full) for i in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load `thinker.visual.*` tensors with the prefix removed; clear errors on missing/mis-shaped."""
        load_encoder_state_dict(self, state_dict, "vision encoder")

    def encode(self, patches: torch.Tensor, grid: tuple[int, int, int], lay: FrameLayout | None = None) -> torch.Tensor:
        """One image or video: patches [t*gh*gw, patch_dim] with grid (t, gh, gw) -> [t*gh*gw/4, out]."""
        t, gh, gw = check_grid(patches, grid, self.cfg)
        lay = lay or frame_layout(self.cfg, gh, gw, patches.device)
        x = self.patch_embed(patches).view(t, gh * gw, -1)
        for block in self.blocks:
            x = block(x, lay)
        return self.merger(x).flatten(0, 1)

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Several images/videos concatenated as the processor's pixel_values: [sum t*h*w, patch_dim] ->
        [sum t*h*w/4, out], in input order."""
        return torch.cat([self.encode(p, g) for p, g in split_by_grid(patches, grid_thw)])

    def encode_image(self, frame: torch.Tensor) -> torch.Tensor:
        """A normalised image [C, H, W] (H, W multiples of 28) -> tokens; it fills both frames of a patch."""
        patches, grid = patchify(frame[None].expand(self.cfg.temporal_patch_size, -1, -1, -1), self.cfg)
        return self.encode(patches, grid)

    # ---- streaming ---------------------------------------------------------------------------------------

    def init_state(self, height: int, width: int, device: torch.device | str | None = None) -> VisionEncoderState:
        """State for a stream of normalised frames of `height` x `width` px (multiples of 28)."""
        check_stream_size(height, width, self.cfg)
        dtype = self.patch_embed.proj.weight.dtype
        p = self.cfg.patch_size
        lay = frame_layout(self.cfg, height // p, width // p, torch.device(device) if device else None)
        return VisionEncoderState(pending=torch.zeros(self.cfg.in_channels, height, width, dtype=dtype, device=device),
                                  layout=lay)

    def step(self, state: VisionEncoderState, frame: torch.Tensor) -> torch.Tensor:
        """Feed one normalised frame [C, H, W]; on every second frame the temporal patch is encoded and its
        tokens returned [gh*gw/4, out]; otherwise an empty [0, out]."""
        check_frame(state.pending, frame)
        if not state.has_pending:
            state.pending.copy_(frame)
            state.has_pending = True
            return state.pending.new_zeros(0, self.cfg.out_hidden_size)
        return self._encode_pair(state, torch.stack([state.pending, frame.to(state.pending.dtype)]))

    def flush(self, state: VisionEncoderState) -> torch.Tensor:
        """End of the stream: an odd last frame is repeated to fill its temporal patch (as the reference
        processor pads); returns its tokens or an empty [0, out]."""
        if not state.has_pending:
            return state.pending.new_zeros(0, self.cfg.out_hidden_size)
        return self._encode_pair(state, torch.stack([state.pending, state.pending]))

    def _encode_pair(self, state: VisionEncoderState, frames: torch.Tensor) -> torch.Tensor:
        patches, grid = patchify(frames, self.cfg)
        out = self.encode(patches, grid, state.layout)
        state.has_pending = False
        state.n_patches += 1
        return out
