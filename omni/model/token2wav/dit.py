"""The token2wav DiT: a flow-matching transformer that turns codec codes into an 80-bin log-mel.

One forward evaluates the velocity field v(x_t, t | codes, speaker) of the ODE that carries noise x_0 to
the mel x_1 (the ODE itself is in `solver.py`). Layout (Qwen2.5-Omni-7B: 22 layers, d 1024, 16 heads of
64): input projection of [x_t (80), ECAPA(ref mel) (128), codec embedding repeated x2 (512), speaker
vector (192)] -> blocks with AdaLN-Zero modulation by the flow time -> final AdaLN -> 80 mel bins.

Attention is block-local: frames are grouped in blocks of 24 mel frames (240 ms); a layer sees its own
block plus one block back (layers 0 and 20) or one block ahead (layer 10), so the whole stack sees two
blocks back and one ahead. That bounded receptive field is what makes chunked streaming possible.

Quirk kept from training: rotary position embedding is applied to head 0 only, in the interleaved
(pairwise) layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields
from omni.model.token2wav.ecapa import ECAPATDNN, ECAPAConfig

# Our field -> its key(s) in `dit_config` (transformers 5 names first, then the older dim/depth/heads).
_HF_NAMES: dict[str, str | tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "dim"),
    "num_layers": ("num_hidden_layers", "depth"),
    "num_heads": ("num_attention_heads", "heads"),
    "head_dim": "head_dim",
    "ff_mult": "ff_mult",
    "emb_dim": "emb_dim",
    "num_embeds": "num_embeds",
    "mel_dim": "mel_dim",
    "repeats": "repeats",
    "block_size": "block_size",
    "look_ahead_layers": "look_ahead_layers",
    "look_backward_layers": "look_backward_layers",
    "max_position_embeddings": "max_position_embeddings",
    "enc_emb_dim": "enc_emb_dim",
}


@dataclass
class DiTConfig:
    """Shapes of the DiT (Qwen2.5-Omni `token2wav_config.dit_config`); defaults are the released 7B values."""

    hidden_size: int = 1024
    num_layers: int = 22
    num_heads: int = 16
    head_dim: int = 64
    ff_mult: float = 2.0
    emb_dim: int = 512  # codec embedding width
    num_embeds: int = 8193  # codes 0..8191 (+1 row in the table)
    mel_dim: int = 80
    repeats: int = 2  # mel frames per codec code (50 Hz codes -> 100 Hz mel)
    block_size: int = 24  # mel frames per attention block
    look_ahead_layers: tuple[int, ...] = (10,)
    look_backward_layers: tuple[int, ...] = (0, 20)
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    enc_emb_dim: int = 192  # speaker vector `cond` of a voice
    ecapa: ECAPAConfig = field(default_factory=ECAPAConfig)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("look_ahead_layers", "look_backward_layers"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        bad = [i for i in self.look_ahead_layers + self.look_backward_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"dit look-ahead/back layers {bad} outside range({self.num_layers})")
        if self.head_dim % 2:
            raise ConfigError(f"dit head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> DiTConfig:
        """Read a `dit_config` dict (transformers 5 names, or the older dim/depth/heads)."""
        kw = hf_fields(cls, cfg, _HF_NAMES, "dit_config")
        if "head_dim" not in kw and ("hidden_size" in kw or "num_heads" in kw):
            kw["head_dim"] = kw.get("hidden_size", cls.hidden_size) // kw.get("num_heads", cls.num_heads)
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = rope.get("rope_theta", cfg.get("rope_theta"))
        if theta is not None:
            kw["rope_theta"] = float(theta)
        return cls(**kw, ecapa=ECAPAConfig.from_hf_config(cfg))

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, keys in _HF_NAMES.items():
            v = getattr(self, name)
            out[keys if isinstance(keys, str) else keys[0]] = list(v) if isinstance(v, tuple) else v
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return out | self.ecapa.to_hf_config()


def timestep_features(t: torch.Tensor, dim: int = 256, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of flow times t [B]; frequencies in float32 as the checkpoint was trained."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    ang = scale * t[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1).to(t.dtype)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, dim]
        return self.fc2(F.silu(self.fc1(timestep_features(t, self.freq_dim))))


class AdaLNZero(nn.Module):
    """LayerNorm without affine, modulated by the time embedding; `n` modulation vectors."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, n * dim)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [B, C] -> n x [B, 1, C]
        return tuple(m[:, None] for m in self.linear(F.silu(temb)).chunk(self.n, dim=1))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def rope_head0(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate head 0 of x [B, H, T, D] pairwise ((x0, x1), (x2, x3), ...) by cos/sin [T, D/2]; other heads pass."""
    h0 = x[:, 0]
    even, odd = h0[..., 0::2], h0[..., 1::2]
    # Layout of the rotated head: evens then odds. Only q.k of head 0 reads it, and q and k share the
    # layout, so the order does not change the result.
    rot = torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return torch.cat([rot[:, None], x[:, 1:]], dim=1)


class DiTAttention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        inner = cfg.num_heads * cfg.head_dim
        self.to_q = nn.Linear(cfg.hidden_size, inner)
        self.to_k = nn.Linear(cfg.hidden_size, inner)
        self.to_v = nn.Linear(cfg.hidden_size, inner)
        self.to_out = nn.Linear(inner, cfg.hidden_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (
            p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v)
        )
        q, k = rope_head0(q, *rope), rope_head0(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * mult))
        self.fc2 = nn.Linear(int(dim * mult), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, back: int, ahead: int) -> None:
        super().__init__()
        self.back, self.ahead = back, ahead  # attention reach in blocks
        self.attn_norm = AdaLNZero(cfg.hidden_size, 6)
        self.attn = DiTAttention(cfg)
        self.ff = FeedForward(cfg.hidden_size, cfg.ff_mult)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.attn_norm(temb)
        x = x + gate_a * self.attn(_norm(x) * (1 + scale_a) + shift_a, rope, mask)
        return x + gate_f * self.ff(_norm(x) * (1 + scale_f) + shift_f)


@dataclass
class DiTPlan:
    T: int
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [T, head_dim / 2]
    masks: dict[tuple[int, int], torch.Tensor]  # (back, ahead) -> [T, T] bool, or [B, 1, T, T] (ragged batch)


def block_masks(
    T: int, block: int, reaches: set[tuple[int, int]], device: torch.device
) -> dict[tuple[int, int], torch.Tensor]:
    """Boolean [T, T] masks (True = visible) per (back, ahead) reach, blocks counted from frame 0."""
    b = torch.arange(T, device=device) // block
    diff = b[None, :] - b[:, None]  # key block - query block
    return {(back, ahead): (diff >= -back) & (diff <= ahead) for back, ahead in reaches}


def ragged_masks(
    masks: dict[tuple[int, int], torch.Tensor], lengths: Sequence[int]
) -> dict[tuple[int, int], torch.Tensor]:
    """`block_masks` [T, T] for a batch whose row i holds `lengths[i]` frames, then padding: [B, 1, T, T]. A real
    frame sees real frames only, so its row is what it is alone; a padding frame sees padding only (never an
    empty row, whose NaN would reach the real frames through V)."""
    T = next(iter(masks.values())).shape[-1]
    n = torch.as_tensor(list(lengths), device=next(iter(masks.values())).device)
    real = torch.arange(T, device=n.device)[None] < n[:, None]  # [B, T]
    same = (real[:, :, None] == real[:, None, :])[:, None]  # [B, 1, T, T]
    return {k: m[None, None] & same for k, m in masks.items()}


class DiT(nn.Module):
    """Velocity field of the flow-matching mel decoder. Weights only; inputs carry everything per call."""

    inv_freq: torch.Tensor

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.time_embed = TimestepEmbedding(C)
        self.codec_embed = nn.Embedding(cfg.num_embeds + 1, cfg.emb_dim)
        self.ecapa = ECAPATDNN(cfg.ecapa, cfg.mel_dim)
        self.input_proj = nn.Linear(cfg.mel_dim + cfg.ecapa.out_dim + cfg.emb_dim + cfg.enc_emb_dim, C)
        self.blocks = nn.ModuleList(
            DiTBlock(cfg, int(i in cfg.look_backward_layers), int(i in cfg.look_ahead_layers))
            for i in range(cfg.num_layers)
        )
        self.norm_out = AdaLNZero(C, 2)
        self.proj_out = nn.Linear(C, cfg.mel_dim)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec embeddings [B, N * repeats, emb_dim] of codes [B, N] (each code covers `repeats` frames)."""
        return self.codec_embed(codes).repeat_interleave(self.cfg.repeats, dim=1)

    def speaker_rows(self, cond: torch.Tensor, ref_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voice conditioning for the conditional and unconditional (CFG) rows, computed once per voice.

        cond [1, enc_emb_dim], ref_mel [1, T_ref, mel] -> (ECAPA vectors [2, ecapa.out_dim], speaker vectors
        [2, enc_emb_dim]); the unconditional row has ECAPA of a zero mel and a zero speaker vector.
        """
        ecapa = self.ecapa(torch.cat([ref_mel, torch.zeros_like(ref_mel)]))
        return ecapa, torch.cat([cond, torch.zeros_like(cond)])

    def condition(self, codes: torch.Tensor, speaker: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Everything but x_t of the input projection: [2, N * repeats, C_in - mel_dim] for codes [1, N].

        Row 0 is conditional; row 1 (CFG) sees code 0 everywhere and the unconditional speaker row.
        Computed once per utterance (or streaming window) and reused by all 36 velocity evaluations.
        """
        code_emb = torch.cat([self.embed_codes(codes), self.embed_codes(torch.zeros_like(codes))])
        T = code_emb.shape[1]
        ecapa, vec = speaker
        return torch.cat([ecapa[:, None].expand(-1, T, -1), code_emb, vec[:, None].expand(-1, T, -1)], dim=-1)

    def plan(
        self, T: int, device: torch.device, dtype: torch.dtype, lengths: Sequence[int] | None = None
    ) -> DiTPlan:
        """Rotary tables and block masks of a T-frame sequence (the same for every evaluation of one solve);
        `lengths`: frames of each batch row, the rest padding (`ragged_masks`), when they are not all T."""
        # Angles in float32 from integer positions, as the reference computes them, then cast.
        ang = torch.arange(T, device=device).float()[:, None] * self.inv_freq.float()[None]
        blocks = cast(list[DiTBlock], self.blocks)
        masks = block_masks(T, self.cfg.block_size, {(b.back, b.ahead) for b in blocks}, device)
        if lengths is not None and any(n != T for n in lengths):
            if max(lengths) > T or min(lengths) < 1:
                raise ValueError(f"row lengths {list(lengths)} must be in [1, {T}]")
            masks = ragged_masks(masks, lengths)
        return DiTPlan(T, (ang.cos().to(dtype), ang.sin().to(dtype)), masks)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, conditioning: torch.Tensor, plan: DiTPlan | None = None
    ) -> torch.Tensor:
        """Velocity [B, T, mel] at noisy mel x [B, T, mel] and flow times t [B], given `condition(...)` rows."""
        B, T, _ = x.shape
        if T > self.cfg.max_position_embeddings:
            raise ValueError(f"mel length {T} exceeds max_position_embeddings {self.cfg.max_position_embeddings}")
        if plan is None or plan.T != T:
            plan = self.plan(T, x.device, x.dtype)
        h = self.input_proj(torch.cat([x, conditioning.to(x.dtype)], dim=-1))
        temb = self.time_embed(t)
        for blk in cast(list[DiTBlock], self.blocks):
            h = blk(h, temb, plan.rope, plan.masks[(blk.back, blk.ahead)])
        scale, shift = self.norm_out(temb)
        return self.proj_out(_norm(h) * (1 + scale) + shift)
