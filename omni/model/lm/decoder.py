"""Decoder-only transformer LM (Llama / Qwen2 / Qwen3-MoE family) with per-session state.

The module holds weights only and is shared by every session; each session owns a `DecoderState` (its
bounded KV cache and position counter) made by `init_state` and passed to every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from omni.kernels.cpu import Library
from omni.kernels.decode_step import CACHE_DTYPES, DecodeStep, LayerWeights
from omni.kernels.q8_matmul import pack_q8_0, q8_0_matmul
from omni.model.layers.attention import Attention
from omni.model.layers.int4_linear import Q4Linear
from omni.model.layers.mlp import GatedMLP, SparseMoE
from omni.model.layers.norm import RMSNorm
from omni.model.layers.rope import fold_rope, rope_cos_sin, rope_inv_freq
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decode_kernels import DISPATCH_OPS, KernelOps, decode_step, single_session_inputs
from omni.model.lm.kv_cache import CacheConfig, KVCache


@dataclass
class DecoderState:
    """Everything one session's decoder needs between calls."""

    cache: KVCache
    next_position: int = 0  # position of the next text token (max position so far + 1)

    def reset(self) -> None:
        self.cache.reset()
        self.next_position = 0


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None  # [B, V] for the last token, [B, T, V] for all, or None
    hidden: torch.Tensor | None  # [B, T, C] after the final norm, when asked for
    layer_hidden: torch.Tensor | None = None  # [B, T, C] of `hidden_layer`, when asked for


@dataclass
class LayerAdds:
    """Residuals added to the hidden states after decoder layers 0 .. len(adds) - 1 at some of the new tokens
    (Qwen3-Omni's DeepStack: vision features at the visual tokens). Prefill only, batch of one."""

    mask: torch.Tensor  # [T] bool over the tokens fed in this call
    adds: list[torch.Tensor]  # per layer i: [mask.sum(), C]

    def __post_init__(self) -> None:
        n = int(self.mask.sum())
        if any(a.shape[0] != n for a in self.adds):
            raise ValueError(f"layer residuals must have one row per masked token ({n})")

    def window(self, start: int, end: int) -> LayerAdds:
        """The part for tokens start .. end - 1."""
        before = int(self.mask[:start].sum())
        m = self.mask[start:end]
        n = int(m.sum())
        return LayerAdds(m, [a[before : before + n] for a in self.adds])


class DecoderLayer(nn.Module):
    mlp: GatedMLP | SparseMoE

    def __init__(self, cfg: DecoderConfig, index: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias,
                                   cfg.qk_norm, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_sparse_layer(index):
            self.mlp = SparseMoE(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size,
                                 cfg.norm_topk_prob, cfg.shared_expert_intermediate_size)
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)


_RESCORED = 8  # candidates re-scored in full precision by a narrow head (see DecoderLM.head)


class DecoderLM(nn.Module):
    inv_freq: torch.Tensor  # [head_dim // 2] float64, a non-persistent buffer
    narrow_head: torch.Tensor | None  # see `head`; a non-persistent buffer
    _fused: DecodeStep | None  # whole decode steps in one C call (see enable_fused_decode)
    _head_lib: Library | None  # the kernels scoring a Q8_0 narrow head
    decode_ops: KernelOps | None  # one-token steps on these kernels; None: the GPU kernels on CUDA only

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.register_buffer("narrow_head", None, persistent=False)
        self._fused = None
        self._head_lib = None
        self.decode_ops = None

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The residual stream's dtype (the embedding table may be stored narrower, see `head`)."""
        return self.norm.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The KV cache's element type when the CacheConfig leaves it open: float16 with the fused 4-bit CPU
        step (half the bytes it reads per token: at 2,048 tokens of context the float32 cache is 94 MB per
        token for SmolLM2-135M, as much as the weights), otherwise the residual stream's dtype (so the
        float32 parity tests against transformers keep an exact cache)."""
        return torch.float16 if self._fused is not None else self.dtype

    def init_state(self, cache: CacheConfig | None = None, batch: int = 1) -> DecoderState:
        """A fresh session state; its cache is allocated once here and never grows."""
        cache = cache or default_cache_config(self.cfg)
        kv = KVCache(cache, self.cfg.num_layers, batch, self.cfg.num_kv_heads, self.cfg.head_dim,
                     device=self.device, dtype=cache.dtype or self.cache_dtype)
        return DecoderState(cache=kv)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of final-norm hidden states [..., C]."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        narrow = self.narrow_head
        if narrow is None:
            return F.linear(hidden, weight)
        # A narrow copy of the head scores the whole vocabulary: bfloat16 (half the bytes read per token;
        # logits rounded to ~3 significant digits, enough to tie close candidates - SmolLM2's first reply
        # token: "The" 25.33 vs "L" 25.24) or, with the C kernels, Q8_0 blocks (a quarter of the bytes;
        # exact for SmolLM2, whose tied embedding is stored as Q8_0). The leading candidates are re-scored
        # with the exact weights, so greedy decoding and top-k keep the full-precision order.
        if narrow.dtype == torch.uint8:
            assert self._head_lib is not None
            flat = hidden.reshape(-1, hidden.shape[-1]).float().contiguous()
            logits = q8_0_matmul(self._head_lib, narrow, hidden.shape[-1], flat)
            logits = logits.view(*hidden.shape[:-1], -1).to(hidden.dtype)
        else:
            logits = F.linear(hidden.to(narrow.dtype), narrow).to(hidden.dtype)
        top = logits.topk(_RESCORED, dim=-1).indices
        exact = torch.einsum("...c,...kc->...k", hidden, weight[top].to(hidden.dtype))
        return logits.scatter_(-1, top, exact)

    def use_narrow_head(self, kind: torch.dtype | str, lib: Library | None = None) -> None:
        """Score the vocabulary with a narrower copy of the head (exact weights kept for re-scoring):
        a torch dtype, or "q8_0" (Q8_0 blocks scored by the C kernels `lib`)."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        if kind == "q8_0":
            if lib is None or weight.device.type != "cpu" or weight.shape[1] % 32:
                raise ValueError("a Q8_0 head needs the CPU kernels and a hidden size divisible by 32")
            self.narrow_head, self._head_lib = pack_q8_0(weight.detach()), lib
            return
        assert isinstance(kind, torch.dtype)
        self.narrow_head = None if kind == weight.dtype else weight.detach().to(kind)

    def enable_fused_decode(self, lib: Library) -> bool:
        """Run one-token steps of a single session as one C call (omni/kernels/decode_step.py) when every
        projection is a Q4Linear and the residual stream and cache are float32 on the CPU; returns whether
        it could. Prefill and batches keep the per-layer path, which uses the same 4-bit kernels. Sessions
        started afterwards get a float16 cache unless their CacheConfig says otherwise (`cache_dtype`).
        The C step has no q/k norm and no mixture-of-experts MLP: such models keep the per-layer path."""
        if self.cfg.qk_norm or self.cfg.num_experts:
            return False
        layers = cast(list[DecoderLayer], self.layers)
        projections = [p for L in layers for p in (L.self_attn.qkv_proj, L.self_attn.o_proj, L.mlp.gate_up_proj,
                                                    L.mlp.down_proj)]
        if self.dtype != torch.float32 or self.device.type != "cpu" or \
                not all(isinstance(p, Q4Linear) for p in projections):
            return False
        q4 = cast(list[Q4Linear], projections)
        cfg = self.cfg
        weights = [LayerWeights(qkv=qkv.blocks, o=o.blocks, gate_up=gate_up.blocks, down=down.blocks, qkv_bias=qkv.bias,
                                attn_norm=L.input_layernorm.weight.detach(),
                                mlp_norm=L.post_attention_layernorm.weight.detach())
                   for L, (qkv, o, gate_up, down) in zip(layers, zip(*[iter(q4)] * 4, strict=True), strict=True)]
        self._fused = DecodeStep(lib, weights, self.norm.weight.detach(), num_heads=cfg.num_heads,
                                 num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                 intermediate_size=cfg.intermediate_size, eps=cfg.rms_norm_eps)
        return True

    @torch.inference_mode()
    def forward(
        self,
        state: DecoderState,
        input_ids: torch.Tensor | None = None,  # [B, T]
        inputs_embeds: torch.Tensor | None = None,  # [B, T, C]
        positions: torch.Tensor | None = None,  # [B, T] or [3, B, T]; default: next text positions
        logits: str = "last",  # "last" | "all" | "none"
        return_hidden: bool = False,
        layer_adds: LayerAdds | None = None,
        hidden_layer: int | None = None,
    ) -> DecoderOutput:
        """Feed T new tokens (ids or embeddings) into the session and return their logits.

        `layer_adds`: residuals added after the first layers at some tokens (see LayerAdds).
        `hidden_layer` k: also return the hidden states entering layer k (k = 0: the input embeddings; the
        output of layer k - 1 before any layer add), or after the final norm for k = num_layers."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if (input_ids if input_ids is not None else inputs_embeds).shape[1] == 0:  # type: ignore[union-attr]
            raise ValueError("empty input: at least one token is needed")
        if input_ids is not None and input_ids.device.type == "cpu":  # (on GPU this check would sync)
            if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.cfg.vocab_size:
                raise ValueError(f"token id out of range [0, {self.cfg.vocab_size})")
        x = (self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds).to(self.dtype)
        B, T, _ = x.shape
        if layer_adds is not None and (B != 1 or layer_adds.mask.shape != (T,)):
            raise ValueError(f"layer_adds needs one session and a mask over the {T} new tokens")
        if hidden_layer is not None and not 0 <= hidden_layer <= self.cfg.num_layers:
            raise ValueError(f"hidden_layer {hidden_layer} is outside 0..{self.cfg.num_layers}")
        if positions is None:
            start = state.next_position
            positions = torch.arange(start, start + T, device=x.device).expand(B, T)
        temporal = positions[0] if positions.dim() == 3 else positions  # [B, T]
        state.next_position = int(positions.max()) + 1

        chunk = state.cache.cfg.chunk
        hiddens, outs, taps = [], [], []
        for s in range(0, T, chunk):
            tap: list[torch.Tensor] = []
            adds = None if layer_adds is None else layer_adds.window(s, s + chunk)
            h = self._forward_chunk(state, x[:, s : s + chunk], positions[..., s : s + chunk],
                                    temporal[0, s : s + chunk], adds, hidden_layer, tap)
            if hidden_layer is not None:
                taps.append(tap[0] if tap else h)
            if logits == "all":
                outs.append(self.head(h))
            if return_hidden:
                hiddens.append(h)
            last = h
        out_logits = None
        if logits == "all":
            out_logits = torch.cat(outs, dim=1)
        elif logits == "last":
            out_logits = self.head(last[:, -1])
        return DecoderOutput(logits=out_logits, hidden=torch.cat(hiddens, dim=1) if return_hidden else None,
                             layer_hidden=torch.cat(taps, dim=1) if hidden_layer is not None else None)

    def _forward_chunk(
        self, state: DecoderState, x: torch.Tensor, positions: torch.Tensor, temporal: torch.Tensor,
        adds: LayerAdds | None = None, hidden_layer: int | None = None, tap: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        cache = state.cache
        plan = cache.plan(temporal)
        ops = self.decode_ops or (DISPATCH_OPS if x.is_cuda else None)
        plain = adds is None and hidden_layer is None
        if plain and ops is not None and x.shape[1] == 1:  # decode on the GPU kernels (omni/model/lm/decode_kernels.py)
            return decode_step(self, ops, single_session_inputs(x, positions, cache, plan.slots, plan.sink_shift))
        section, interleaved = self.cfg.mrope_section, self.cfg.mrope_interleaved
        rope = fold_rope(*rope_cos_sin(positions, self.inv_freq, section, interleaved), self.dtype)
        sink_rope = None
        if plan.sink_shift is not None:
            sink_rope = fold_rope(*rope_cos_sin(positions - plan.sink_shift, self.inv_freq, section, interleaved),
                                  self.dtype)
        if plain and self._fused is not None and x.shape[:2] == (1, 1) and cache.k.dtype in CACHE_DTYPES:
            D = self.cfg.head_dim
            sink_table = None if sink_rope is None else torch.cat(sink_rope).view(2, D)
            out = self._fused(x.reshape(-1).clone(), cache.k, cache.v, int(plan.slots[0]), plan.mask.reshape(-1),
                              torch.cat(rope).view(2, D), sink_table, cache.cfg.sinks)
            return out.view(1, 1, -1)
        layers = cast(list[DecoderLayer], self.layers)
        if hidden_layer == 0 and tap is not None:
            tap.append(x)
        for i, layer in enumerate(layers):
            x = x + layer.self_attn(layer.input_layernorm(x), rope, sink_rope, cache, i, plan)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if hidden_layer == i + 1 < len(layers) and tap is not None:
                tap.append(x)  # before this layer's add, as the reference records it
            if adds is not None and i < len(adds.adds) and adds.mask.any():
                x = x.clone()
                x[0, adds.mask] += adds.adds[i].to(x.dtype)
        return self.norm(x)


def default_cache_config(cfg: DecoderConfig, window: int = 4096, sinks: int = 4) -> CacheConfig:
    """Sinks + window inside the trained context, so every rotary distance stays in range."""
    window = min(window, cfg.max_position_embeddings - sinks)
    return CacheConfig(sinks=sinks, window=window, chunk=min(256, window))
