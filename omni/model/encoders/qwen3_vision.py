"""Qwen3-Omni's vision encoder: the Qwen3-VL ViT with DeepStack outputs.

Facts (shared/reference/qwen_omni.md section 2.3, transformers' Qwen3OmniMoeVisionEncoder):
* input: flattened 2x16x16 patches (`vision_preprocess.patchify`) in 2x2 merge-block order;
  Conv3d patch embedding with bias;
* a learned position table of side x side entries (48 x 48 = 2304) resized bilinearly with
  align_corners=True to each frame's gh x gw patch grid and added to every temporal patch;
* blocks: LayerNorm (eps 1e-6), attention with a fused qkv (bias) and the same 2-D rotary angles as
  Qwen2.5-VL, full attention within each temporal patch (no windows), GELU-tanh MLP (linear_fc1/fc2);
* merger: LayerNorm over each patch, 2x2 patches concatenated, MLP (GELU) to the Thinker's width;
* DeepStack: after each block in `deepstack_visual_indexes` a merger whose LayerNorm runs over the
  concatenated 2x2 patches gives one more feature per LLM token; the Thinker adds them to its hidden
  states at its first layers.

Temporal patches never attend to each other, so a video can be encoded patch by patch as frames arrive.

Weights load from the checkpoint's `thinker.visual.*` tensors (prefix removed) by `load_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.encoders.config import Qwen3VisionConfig
from omni.model.encoders.vision_encoder import (
    PatchEmbed,
    apply_rotary,
    check_frame,
    check_grid,
    check_stream_size,
    merge_block_coords,
    rotary_angles,
    split_by_grid,
)
from omni.model.encoders.vision_preprocess import patchify
from omni.model.encoders.weights import load_encoder_state_dict

_LN_EPS = 1e-6


@dataclass
class Qwen3FrameLayout:
    """Per-frame-size constants: the resized position table and the rotary tables, in merge-block order."""

    gh: int  # patches per column (height / 16)
    gw: int
    pos: torch.Tensor  # [N, D] learned positions resized to gh x gw
    cos: torch.Tensor  # [N, 1, head_dim] float32
    sin: torch.Tensor


@dataclass
class Qwen3VisionState:
    """Per-video-stream state: the first frame of the temporal patch being filled, and the frame layout."""

    pending: torch.Tensor  # [C, H, W] preallocated, normalised
    layout: Qwen3FrameLayout
    has_pending: bool = False
    n_patches: int = 0  # temporal patches encoded so far


@dataclass
class Qwen3VisionOutput:
    """Tokens for the Thinker [n, out_hidden_size] and one DeepStack feature [n, out_hidden_size] per
    index in `deepstack_visual_indexes`, row-aligned with the tokens."""

    tokens: torch.Tensor
    deepstack: list[torch.Tensor]


class Qwen3VisionAttention(nn.Module):
    def __init__(self, cfg: Qwen3VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # [t, N, D]
        t, n, d = x.shape
        q, k, v = self.qkv(x).view(t, n, 3, self.num_heads, -1).unbind(2)  # each [t, N, H, hd]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(o.transpose(1, 2).reshape(t, n, d))


class Qwen3VisionMLP(nn.Module):
    def __init__(self, cfg: Qwen3VisionConfig) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class Qwen3VisionBlock(nn.Module):
    def __init__(self, cfg: Qwen3VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=_LN_EPS)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=_LN_EPS)
        self.attn = Qwen3VisionAttention(cfg)
        self.mlp = Qwen3VisionMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class Qwen3PatchMerger(nn.Module):
    """2x2 patches -> one token. `postshuffle_norm` (DeepStack) normalises the concatenated 4*D vector;
    otherwise (the main merger) each patch is normalised before concatenation."""

    def __init__(self, cfg: Qwen3VisionConfig, postshuffle_norm: bool) -> None:
        super().__init__()
        self.wide = cfg.hidden_size * cfg.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.ln_q = nn.LayerNorm(self.wide if postshuffle_norm else cfg.hidden_size, eps=_LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(self.wide, self.wide), nn.GELU(), nn.Linear(self.wide, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., N, D] -> [..., N / 4, out]
        if self.postshuffle_norm:
            return self.mlp(self.ln_q(x.reshape(*x.shape[:-2], -1, self.wide)))
        return self.mlp(self.ln_q(x).reshape(*x.shape[:-2], -1, self.wide))


class Qwen3VisionEncoder(nn.Module):
    """Qwen3-VL ViT with DeepStack mergers. Weights only."""

    def __init__(self, cfg: Qwen3VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, bias=True)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(Qwen3VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = Qwen3PatchMerger(cfg, postshuffle_norm=False)
        self.merger_list = nn.ModuleList(
            Qwen3PatchMerger(cfg, postshuffle_norm=True) for _ in cfg.deepstack_visual_indexes
        )

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load `thinker.visual.*` tensors with the prefix removed; clear errors on missing/mis-shaped."""
        load_encoder_state_dict(self, state_dict, "Qwen3 vision encoder")

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """The learned side x side table resized to gh x gw (bilinear, align_corners=True), in merge-block
        order: [gh * gw, D]."""
        side = self.cfg.pos_grid_side
        table = self.pos_embed.weight.view(side, side, -1).permute(2, 0, 1)[None]  # [1, D, side, side]
        grid = F.interpolate(table.float(), size=(gh, gw), mode="bilinear", align_corners=True)[0]
        rows, cols = merge_block_coords(gh, gw, self.cfg.spatial_merge_size)
        return grid[:, rows, cols].T.to(self.pos_embed.weight.dtype)

    def frame_layout(self, gh: int, gw: int) -> Qwen3FrameLayout:
        """Position and rotary tables for frames of gh x gw patches (computed once per stream/grid)."""
        dev = self.pos_embed.weight.device
        angles = rotary_angles(gh, gw, self.cfg.spatial_merge_size, self.cfg.head_dim, self.cfg.rope_theta).to(dev)
        return Qwen3FrameLayout(gh, gw, self.position_embedding(gh, gw), angles.cos()[:, None], angles.sin()[:, None])

    def encode(
        self, patches: torch.Tensor, grid: tuple[int, int, int], lay: Qwen3FrameLayout | None = None
    ) -> Qwen3VisionOutput:
        """One image or video: patches [t*gh*gw, patch_dim] with grid (t, gh, gw) -> t*gh*gw/4 tokens."""
        t, gh, gw = check_grid(patches, grid, self.cfg)
        lay = lay or self.frame_layout(gh, gw)
        x = self.patch_embed(patches).view(t, gh * gw, -1) + lay.pos
        deepstack = []
        stack = {layer: i for i, layer in enumerate(self.cfg.deepstack_visual_indexes)}
        for i, block in enumerate(self.blocks):
            x = block(x, lay.cos, lay.sin)
            if i in stack:
                deepstack.append(self.merger_list[stack[i]](x).flatten(0, 1))
        return Qwen3VisionOutput(self.merger(x).flatten(0, 1), deepstack)

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor | Sequence[Sequence[int]]) -> Qwen3VisionOutput:
        """Several images/videos concatenated as the processor's pixel_values: [sum t*h*w, patch_dim] ->
        tokens and DeepStack features [sum t*h*w/4, out] each, in input order."""
        outs = [self.encode(p, g) for p, g in split_by_grid(patches, grid_thw)]
        if len(outs) == 1:
            return outs[0]
        return Qwen3VisionOutput(
            torch.cat([o.tokens for o in outs]),
            [torch.cat([o.deepstack[i] for o in outs]) for i in range(len(self.cfg.deepstack_visual_indexes))],
        )

    def encode_image(self, frame: torch.Tensor) -> Qwen3VisionOutput:
        """A normalised image [C, H, W] (H, W multiples of 32) -> tokens; it fills both frames of a patch."""
        patches, grid = patchify(frame[None].expand(self.cfg.temporal_patch_size, -1, -1, -1), self.cfg)
        return self.encode(patches, grid)

    # ---- streaming ------------------------------------------------------------------------------------

    def init_state(self, height: int, width: int, device: torch.device | str | None = None) -> Qwen3VisionState:
        """State for a stream of normalised frames of `height` x `width` px (multiples of 32)."""
        check_stream_size(height, width, self.cfg)
        p = self.cfg.patch_size
        dtype = self.patch_embed.proj.weight.dtype
        pending = torch.zeros(self.cfg.in_channels, height, width, dtype=dtype, device=device)
        return Qwen3VisionState(pending=pending, layout=self.frame_layout(height // p, width // p))

    def step(self, state: Qwen3VisionState, frame: torch.Tensor) -> Qwen3VisionOutput | None:
        """Feed one normalised frame [C, H, W]; every second frame completes a temporal patch, whose tokens
        and DeepStack features are returned (as offline: patches never attend to each other); else None."""
        check_frame(state.pending, frame)
        if not state.has_pending:
            state.pending.copy_(frame)
            state.has_pending = True
            return None
        return self._encode_pair(state, torch.stack([state.pending, frame.to(state.pending.dtype)]))

    def flush(self, state: Qwen3VisionState) -> Qwen3VisionOutput | None:
        """End of the stream: an odd last frame is repeated to fill its temporal patch (as the processor
        pads); returns its output, or None when no frame is pending."""
        if not state.has_pending:
            return None
        return self._encode_pair(state, torch.stack([state.pending, state.pending]))

    def _encode_pair(self, state: Qwen3VisionState, frames: torch.Tensor) -> Qwen3VisionOutput:
        patches, grid = patchify(frames, self.cfg)
        out = self.encode(patches, grid, state.layout)
        state.has_pending = False
        state.n_patches += 1
        return out
