"""BigVGAN vocoder of token2wav: 80-bin log-mel at 100 frames/s -> 24 kHz waveform (240 samples per frame).

Layout (Qwen2.5-Omni-7B): k7 conv 80 -> 1536; six transposed-conv upsamplers, rates 5, 3, 2, 2, 2, 2
(= 240), halving the channels down to 24; after each, three anti-aliased multi-periodicity (AMP) residual
blocks (kernels 3, 7, 11; dilations 1, 3, 5) averaged; an anti-aliased SnakeBeta; k7 conv to 1 channel;
clamp to [-1, 1]. Anti-aliasing: every SnakeBeta runs at twice the rate, between a kaiser-windowed sinc
upsampler and downsampler (12 taps, replicate padding at the edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.errors import ConfigError


@dataclass
class BigVGANConfig:
    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (5, 3, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 7, 4, 4, 4, 4)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.resblock_kernel_sizes = tuple(int(k) for k in self.resblock_kernel_sizes)
        self.resblock_dilation_sizes = tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes)
        self.upsample_rates = tuple(int(r) for r in self.upsample_rates)
        self.upsample_kernel_sizes = tuple(int(k) for k in self.upsample_kernel_sizes)
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("bigvgan upsample_rates and upsample_kernel_sizes must have the same length")
        if self.upsample_initial_channel < 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"bigvgan upsample_initial_channel ({self.upsample_initial_channel}) must be >= "
                f"2**{len(self.upsample_rates)}: every upsampler halves the channels"
            )
        if any(len(d) != 3 for d in self.resblock_dilation_sizes):
            raise ConfigError("bigvgan resblock_dilation_sizes must list 3 dilations per block")

    @property
    def hop(self) -> int:
        """Output samples per mel frame (240 = 10 ms at 24 kHz)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> BigVGANConfig:
        keys = (
            "mel_dim",
            "upsample_initial_channel",
            "resblock_kernel_sizes",
            "resblock_dilation_sizes",
            "upsample_rates",
            "upsample_kernel_sizes",
        )
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def to_hf_config(self) -> dict[str, Any]:
        return {
            "mel_dim": self.mel_dim,
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
        }


def kaiser_sinc(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """Low-pass FIR [taps] (float32): kaiser-windowed sinc with unit DC gain (Kaiser's beta formula)."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False, dtype=torch.float32)
    t = (torch.arange(-half, half) + 0.5) if taps % 2 == 0 else (torch.arange(taps) - half)
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return h / h.sum()


def snake_beta(x: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """SnakeBeta on x [B, C, T] with per-channel log-frequency and log-magnitude [C]: x + sin^2(x e^a) / e^b.

    Shared by BigVGAN (between its anti-aliasing filters) and Qwen3-Omni's Code2Wav (applied directly)."""
    a = torch.exp(log_alpha)[None, :, None]
    b = torch.exp(log_beta)[None, :, None]
    return x + (1.0 / (b + 1e-9)) * torch.sin(x * a).pow(2)


class AntiAliasedSnake(nn.Module):
    """x -> downsample2(snake_beta(upsample2(x))) on [B, C, T]; SnakeBeta: x + sin^2(x e^a) / e^b."""

    filt: torch.Tensor

    def __init__(self, channels: int, taps: int = 12) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))  # log-frequency
        self.beta = nn.Parameter(torch.zeros(channels))  # log-magnitude
        self.taps = taps
        # Same low-pass (cutoff 0.25, transition 0.3 of the doubled rate) for up- and downsampling.
        self.register_buffer("filt", kaiser_sinc(0.25, 0.3, taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, k = x.shape[1], self.taps
        w = self.filt.to(x.dtype).expand(C, 1, k)
        pad = k // 2 - 1  # 5 input samples each side, then trim the transposed conv's 15-sample tails
        up = 2 * F.conv_transpose1d(F.pad(x, (pad, pad), mode="replicate"), w, stride=2, groups=C)
        trim = pad * 2 + (k - 2) // 2
        up = up[..., trim : up.shape[-1] - (pad * 2 + (k - 1) // 2)]
        y = snake_beta(up, self.alpha, self.beta)
        return F.conv1d(F.pad(y, (k // 2 - 1, k // 2), mode="replicate"), w, stride=2, groups=C)


class AMPBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations = nn.ModuleList(AntiAliasedSnake(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = cast(list[nn.Module], self.activations)
        for j, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            x = x + c2(acts[2 * j + 1](c1(acts[2 * j](x))))
        return x


def normalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """DiT log-mel -> the vocoder's input scale: dB (floor -115 dB, minus 20 dB), mapped to [-1, 1]."""
    floor = torch.exp(torch.tensor(-115 / 20.0 * math.log(10), dtype=mel.dtype, device=mel.device))
    db = 20 * torch.log10(torch.clamp(torch.exp(mel), min=floor)) - 20
    return torch.clamp(2 * ((db + 115) / 115) - 1, -1, 1)


class BigVGAN(nn.Module):
    def __init__(self, cfg: BigVGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.mel_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, r, padding=(k - r) // 2)
            for i, (r, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList(
            AMPBlock(ch // 2 ** (i + 1), k, d)
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        last = ch // 2 ** len(cfg.upsample_rates)
        self.activation_post = AntiAliasedSnake(last)
        self.conv_post = nn.Conv1d(last, 1, 7, padding=3, bias=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Waveform [B, T * hop] in [-1, 1] from log-mel [B, mel_dim, T]."""
        x = self.conv_pre(normalize_mel(mel))
        n = len(self.cfg.resblock_kernel_sizes)
        blocks = cast(list[nn.Module], self.resblocks)
        for i, up in enumerate(self.ups):
            x = up(x)
            x = sum(blocks[i * n + j](x) for j in range(n)) / n
        x = self.conv_post(self.activation_post(x))
        return torch.clamp(x, -1.0, 1.0)[:, 0]
