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
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from model.lm.config import ConfigError
from model.token2wav.ecapa import ECAPATDNN


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
    enc_dim: int = 128  # ECAPA output
    enc_channels: tuple[int, ...] = (256, 256, 256, 256, 768)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("look_ahead_layers", "look_backward_layers", "enc_channels", "enc_kernel_sizes", "enc_dilations"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if not (len(self.enc_channels) == len(self.enc_kernel_sizes) == len(self.enc_dilations)):
            raise ConfigError("dit enc_channels, enc_kernel_sizes and enc_dilations must have the same length")
        if self.enc_channels[-1] != sum(self.enc_channels[1:-1]):
            raise ConfigError(
                f"dit enc_channels[-1] ({self.enc_channels[-1]}) must equal the sum of the SE-Res2Net widths "
                f"{list(self.enc_channels[1:-1])}: the aggregation layer concatenates them"
            )
        bad = [i for i in self.look_ahead_layers + self.look_backward_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"dit look-ahead/back layers {bad} outside range({self.num_layers})")
        if self.head_dim % 2:
            raise ConfigError(f"dit head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> DiTConfig:
        """Read a `dit_config` dict (transformers 5 names, or the older dim/depth/heads)."""
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        hidden = int(cfg.get("hidden_size", cfg.get("dim", 1024)))
        heads = int(cfg.get("num_attention_heads", cfg.get("heads", 16)))
        return cls(
            hidden_size=hidden,
            num_layers=int(cfg.get("num_hidden_layers", cfg.get("depth", 22))),
            num_heads=heads,
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            ff_mult=float(cfg.get("ff_mult", 2)),
            emb_dim=int(cfg.get("emb_dim", 512)),
            num_embeds=int(cfg.get("num_embeds", 8193)),
            mel_dim=int(cfg.get("mel_dim", 80)),
            repeats=int(cfg.get("repeats", 2)),
            block_size=int(cfg.get("block_size", 24)),
            look_ahead_layers=tuple(cfg.get("look_ahead_layers", (10,))),
            look_backward_layers=tuple(cfg.get("look_backward_layers", (0, 20))),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
            enc_emb_dim=int(cfg.get("enc_emb_dim", 192)),
            enc_dim=int(cfg.get("enc_dim", 128)),
            enc_channels=tuple(cfg.get("enc_channels", (256, 256, 256, 256, 768))),
            enc_kernel_sizes=tuple(cfg.get("enc_kernel_sizes", (5, 3, 3, 3, 1))),
            enc_dilations=tuple(cfg.get("enc_dilations", (1, 2, 3, 4, 1))),
            enc_attention_channels=int(cfg.get("enc_attention_channels", 64)),
            enc_res2net_scale=int(cfg.get("enc_res2net_scale", 2)),
            enc_se_channels=int(cfg.get("enc_se_channels", 64)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "head_dim": self.head_dim,
            "ff_mult": self.ff_mult,
            "emb_dim": self.emb_dim,
            "num_embeds": self.num_embeds,
            "mel_dim": self.mel_dim,
            "repeats": self.repeats,
            "block_size": self.block_size,
            "look_ahead_layers": list(self.look_ahead_layers),
            "look_backward_layers": list(self.look_backward_layers),
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "enc_emb_dim": self.enc_emb_dim,
            "enc_dim": self.enc_dim,
            "enc_channels": list(self.enc_channels),
            "enc_kernel_sizes": list(self.enc_kernel_sizes),
            "enc_dilations": list(self.enc_dilations),
            "enc_attention_channels": self.enc_attention_channels,
            "enc_res2net_scale": self.enc_res2net_scale,
            "enc_se_channels": self.enc_se_channels,
        }


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
    masks: dict[tuple[int, int], torch.Tensor]  # (back, ahead) -> [T, T] bool


def block_masks(
    T: int, block: int, reaches: set[tuple[int, int]], device: torch.device
) -> dict[tuple[int, int], torch.Tensor]:
    """Boolean [T, T] masks (True = visible) per (back, ahead) reach, blocks counted from frame 0."""
    b = torch.arange(T, device=device) // block
    diff = b[None, :] - b[:, None]  # key block - query block
    return {(back, ahead): (diff >= -back) & (diff <= ahead) for back, ahead in reaches}


class DiT(nn.Module):
    """Velocity field of the flow-matching mel decoder. Weights only; inputs carry everything per call."""

    inv_freq: torch.Tensor

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.time_embed = TimestepEmbedding(C)
        self.codec_embed = nn.Embedding(cfg.num_embeds + 1, cfg.emb_dim)
        self.ecapa = ECAPATDNN(cfg)
        self.input_proj = nn.Linear(cfg.mel_dim + cfg.enc_dim + cfg.emb_dim + cfg.enc_emb_dim, C)
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

        cond [1, enc_emb_dim], ref_mel [1, T_ref, mel] -> (ECAPA vectors [2, enc_dim], speaker vectors
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

    def plan(self, T: int, device: torch.device, dtype: torch.dtype) -> DiTPlan:
        """Rotary tables and block masks of a T-frame sequence (the same for every evaluation of one solve)."""
        # Angles in float32 from integer positions, as the reference computes them, then cast.
        ang = torch.arange(T, device=device).float()[:, None] * self.inv_freq.float()[None]
        blocks = cast(list[DiTBlock], self.blocks)
        masks = block_masks(T, self.cfg.block_size, {(b.back, b.ahead) for b in blocks}, device)
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
