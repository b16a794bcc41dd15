"""Grouped-query self-attention over a session's sink + sliding-window KV cache.

q/k/v are one fused projection (fewer, larger matmuls: on 2 CPU cores a decode step is dominated by
per-op overhead and weight reads). Query heads are grouped with their KV head by a view, so the cache
is never expanded with repeat_interleave. With `qk_norm` (the Qwen3 family) each head of q and k is
RMS-normalised over head_dim (weights `q_norm`, `k_norm` [head_dim]) before the rotation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.layers.norm import RMSNorm
from omni.model.layers.rope import apply_folded_rope
from omni.model.lm.kv_cache import AttentionPlan, KVCache


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 qk_norm: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv_proj = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, C]
        rope: tuple[torch.Tensor, torch.Tensor],  # fold_rope tables [B, 1, T, D]
        sink_rope: tuple[torch.Tensor, torch.Tensor] | None,  # tables for scoring sinks, or None
        cache: KVCache,
        layer: int,
        plan: AttentionPlan,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // Hkv
        qkv = self.qkv_proj(x)
        qk = qkv[..., : (H + Hkv) * D].view(B, T, H + Hkv, D)
        if self.q_norm is not None and self.k_norm is not None:
            qk = torch.cat([self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])], dim=2)
        qk = qk.transpose(1, 2)  # [B, H + Hkv, T, D]
        # q and k rotated together: one rotary application per layer instead of two
        qk_rot = apply_folded_rope(qk, rope)
        q_rot, k_rot = qk_rot[:, :H], qk_rot[:, H:]  # [B, H, T, D], [B, Hkv, T, D]
        v = qkv[..., (H + Hkv) * D :].view(B, T, Hkv, D).transpose(1, 2)
        cache.write(layer, plan.slots, k_rot, v)

        n = plan.n_valid
        # read back as stored (a float16 cache rounds the new keys too, exactly as the fused C step reads
        # them), then widened to the query's dtype: attention math stays in the model's precision
        keys = cache.k[layer, :, :, :n].to(q_rot.dtype)  # [B, Hkv, n, D]
        values = cache.v[layer, :, :, :n].to(q_rot.dtype)
        if sink_rope is None:  # heads j*G .. j*G+G-1 share KV head j (no expanded copy of the cache)
            out = F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=plan.mask.to(q_rot.dtype),
                                                 scale=self.scale, enable_gqa=G > 1)
        else:  # the cache has wrapped: sinks are scored by the query rotated to a shifted position
            out = self._attend_shifted_sinks(qk[:, :H], q_rot, keys, values,
                                             sink_rope, cache.cfg.sinks, plan)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))

    def _attend_shifted_sinks(
        self, q: torch.Tensor, q_rot: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        sink_rope: tuple[torch.Tensor, torch.Tensor], sinks: int, plan: AttentionPlan,
    ) -> torch.Tensor:  # -> [B, H, T, D]
        B, H, T, D = q.shape
        Hkv, n = keys.shape[1], keys.shape[2]
        G = H // Hkv
        qg = q_rot.reshape(B, Hkv, G * T, D) * self.scale
        scores = qg @ keys.transpose(-1, -2)  # [B, Hkv, G*T, n]
        qs = apply_folded_rope(q, sink_rope).reshape(B, Hkv, G * T, D) * self.scale
        scores[..., :sinks] = qs @ keys[:, :, :sinks].transpose(-1, -2)
        scores = scores.view(B, Hkv, G, T, n) + plan.mask.to(scores.dtype)
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype).view(B, Hkv, G * T, n)
        return (probs @ values).view(B, H, T, D)
