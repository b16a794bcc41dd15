"""Code2Wav's pre-transformer: pre-norm layers with causal sliding-window attention and LayerScale.

Each query sees itself and the `sliding_window - 1` frames before it. Stacked, L layers reach
L * (window - 1) frames back (568 for the released 8 x 72), so re-decoding a stream piece with a short
left context is not exact; instead every layer keeps the rotated keys and the values of its last
window - 1 frames in an `AttentionState`, which makes a piece's output equal the whole decode's.
(omni/model/layers/attention.py serves the LM's sink + ring cache with a fused q/k/v; this window has no sinks
and keeps the checkpoint's separate projections. RMSNorm and the rotary tables are the shared ones.)

`forward_rows` runs several streams' next frames in one call: right-padded rows, each at its own position with
its own cache fill. Every row attends over its whole cache buffer plus the new frames, masked to its own valid
cached frames and causal window (a padding frame comes after every real one, so the causal mask already hides it
from them), and keeps the last window - 1 of its real keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.code2wav.config import Code2WavConfig
from omni.model.layers.norm import RMSNorm
from omni.model.layers.rope import apply_folded_rope, fold_rope


@dataclass
class AttentionState:
    """Per-session KV memory of all layers: the last `window - 1` frames, oldest first, written in place."""

    k: torch.Tensor  # [layers, B, kv_heads, window - 1, head_dim], rotated
    v: torch.Tensor  # [layers, B, kv_heads, window - 1, head_dim]
    cached: int = 0  # valid frames in k/v
    position: int = 0  # frames decoded so far = position of the next frame


class Attention(nn.Module):
    def __init__(self, cfg: Code2WavConfig) -> None:
        super().__init__()
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.heads, self.kv_heads, self.head_dim = H, Hkv, D
        self.q_proj = nn.Linear(C, H * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, Hkv * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * D, C, bias=cfg.attention_bias)

    def forward(
        self,
        x: torch.Tensor,  # [B, n, C]
        rope: tuple[torch.Tensor, torch.Tensor],  # fold_rope tables [1, 1, n, D]
        cache_k: torch.Tensor,  # [B, Hkv, window - 1, D]
        cache_v: torch.Tensor,
        cached: int,
        mask: torch.Tensor,  # [n, cached + n] bool, True = visible (batched rows: [B, 1, n, cached + n])
        keep: torch.Tensor | None = None,  # batched rows: [B, window - 1] what each cache slot takes from the keys
    ) -> torch.Tensor:
        B, n, _ = x.shape
        q = apply_folded_rope(self.q_proj(x).view(B, n, self.heads, self.head_dim).transpose(1, 2), rope)
        k = apply_folded_rope(self.k_proj(x).view(B, n, self.kv_heads, self.head_dim).transpose(1, 2), rope)
        v = self.v_proj(x).view(B, n, self.kv_heads, self.head_dim).transpose(1, 2)
        keys = torch.cat([cache_k[:, :, :cached], k], dim=2)  # [B, Hkv, cached + n, D]
        values = torch.cat([cache_v[:, :, :cached], v], dim=2)
        if keep is not None:
            idx = keep[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            cache_k.copy_(keys.gather(2, idx))
            cache_v.copy_(values.gather(2, idx))
        elif last := min(cache_k.shape[2], keys.shape[2]):
            cache_k[:, :, :last].copy_(keys[:, :, keys.shape[2] - last :])
            cache_v[:, :, :last].copy_(values[:, :, values.shape[2] - last :])
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Code2WavConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class TransformerLayer(nn.Module):
    def __init__(self, cfg: Code2WavConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        cached: int,
        mask: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope, cache_k, cache_v, cached, mask, keep)
        x = x + self.self_attn_layer_scale(h)
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class PreTransformer(nn.Module):
    """Frame embeddings [B, n, C] -> hidden states [B, n, C] (final RMSNorm included)."""

    inv_freq: torch.Tensor

    def __init__(self, cfg: Code2WavConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        D = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        self.register_buffer("inv_freq", inv, persistent=False)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> AttentionState:
        c = self.cfg
        shape = (c.num_hidden_layers, batch, c.num_key_value_heads, c.sliding_window - 1, c.head_dim)
        k = torch.zeros(shape, device=device, dtype=dtype)
        return AttentionState(k, torch.zeros_like(k))

    def _rope(self, q_pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """fold_rope tables [B, 1, n, D] of positions [B, n]."""
        # Angles in float32 from integer positions, as the reference computes them (and the model was trained).
        ang = q_pos.float()[..., None] * self.inv_freq.float()
        emb = torch.cat([ang, ang], dim=-1)
        return fold_rope(emb.cos(), emb.sin(), dtype)

    def forward(self, x: torch.Tensor, state: AttentionState) -> torch.Tensor:
        n, p0, cached = x.shape[1], state.position, state.cached
        q_pos = torch.arange(p0, p0 + n, device=x.device)
        rope = self._rope(q_pos[None], x.dtype)
        k_pos = torch.arange(p0 - cached, p0 + n, device=x.device)
        mask = (k_pos[None] <= q_pos[:, None]) & (k_pos[None] > q_pos[:, None] - self.cfg.sliding_window)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, state.k[i], state.v[i], cached, mask)
        state.cached = min(cached + n, self.cfg.sliding_window - 1)
        state.position = p0 + n
        return self.norm(x)

    def forward_rows(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cached: torch.Tensor,
                     position: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Several streams' next frames: x [B, N, C] right-padded (row i's first lengths[i] frames are real), k/v
        [layers, B, kv_heads, window - 1, D] their caches stacked (updated in place), cached/position [B] each
        row's `AttentionState` counters (the caller advances them). Row i's real outputs are what `forward` gives
        that stream alone."""
        B, N = x.shape[:2]
        W, dev = self.cfg.sliding_window, x.device
        slots, cols = torch.arange(W - 1, device=dev), torch.arange(N, device=dev)
        q_pos = position[:, None] + cols  # [B, N]
        # keys: the W - 1 cache slots (slot j holds position - cached + j when j < cached), then the new frames
        k_pos = torch.cat([position[:, None] - cached[:, None] + slots, q_pos], dim=1)  # [B, W - 1 + N]
        real = torch.cat([slots[None] < cached[:, None], torch.ones(B, N, dtype=torch.bool, device=dev)], dim=1)
        d = q_pos[:, :, None] - k_pos[:, None, :]  # [B, N, W - 1 + N]
        mask = (real[:, None, :] & (d >= 0) & (d < W))[:, None]
        # the cache keeps each row's last `last` real keys: c-th of its (cached + n) real ones, in slot c - skip
        n = lengths
        last = (cached + n).clamp(max=W - 1)
        c = (cached + n - last)[:, None] + slots  # [B, W - 1]
        src = torch.where(c < cached[:, None], c, W - 1 + c - cached[:, None])
        keep = torch.where(slots[None] < last[:, None], src, slots[None])  # slots past `last`: unchanged
        rope = self._rope(q_pos, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, k[i], v[i], W - 1, mask, keep)
        return self.norm(x)
