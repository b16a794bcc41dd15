"""Grouped-query self-attention over a session's sink + sliding-window KV cache.

q/k/v are one fused projection (fewer, larger matmuls: on 2 CPU cores a decode step is dominated by
per-op overhead and weight reads). Query heads are grouped with their KV head by a view, so the cache
is never expanded with repeat_interleave.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.kv_cache import AttentionPlan, KVCache
from model.layers.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv_proj = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, C]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [B, T, D]
        sink_rope: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin for scoring sinks, or None
        cache: KVCache,
        layer: int,
        plan: AttentionPlan,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // Hkv
        qkv = self.qkv_proj(x)
        q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = qkv[..., H * D : (H + Hkv) * D].view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
        v = qkv[..., (H + Hkv) * D :].view(B, T, Hkv, D).transpose(1, 2)
        q_rot = apply_rope(q, *rope)
        cache.write(layer, plan.slots, apply_rope(k, *rope), v)

        n = plan.n_valid
        keys = cache.k[layer, :, :, :n]  # [B, Hkv, n, D]
        values = cache.v[layer, :, :, :n]
        qg = q_rot.reshape(B, Hkv, G * T, D) * self.scale  # heads j*G .. j*G+G-1 share KV head j
        scores = qg @ keys.transpose(-1, -2)  # [B, Hkv, G*T, n]
        if sink_rope is not None:
            S = cache.cfg.sinks
            qs = apply_rope(q, *sink_rope).reshape(B, Hkv, G * T, D) * self.scale
            scores[..., :S] = qs @ keys[:, :, :S].transpose(-1, -2)
        scores = scores.view(B, Hkv, G, T, n) + plan.mask.to(scores.dtype)
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype).view(B, Hkv, G * T, n)
        out = (probs @ values).view(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(out)
