"""ECAPA-TDNN speaker encoder of the token2wav DiT: reference mel [B, T, 80] -> speaker vector [B, out_dim].

Layout (Qwen2.5-Omni-7B): a k5 TDNN (80 -> 256), three SE-Res2Net blocks (k3, dilations 2/3/4, Res2Net
scale 2, squeeze-excitation to 64 channels), multi-layer feature aggregation over the three block outputs
(concat 3 x 256 = 768 -> k1 TDNN), attentive statistics pooling (attention over time, then weighted mean
and std) and a 1x1 conv to 128. Every conv pads "same" with reflection, as the checkpoint was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields

# Our field -> the key in the DiT's `dit_config` (the released config keeps ECAPA's settings there, enc_*).
_HF_NAMES = {
    "out_dim": "enc_dim",
    "channels": "enc_channels",
    "kernel_sizes": "enc_kernel_sizes",
    "dilations": "enc_dilations",
    "attention_channels": "enc_attention_channels",
    "res2net_scale": "enc_res2net_scale",
    "se_channels": "enc_se_channels",
}


@dataclass
class ECAPAConfig:
    """Shapes of the ECAPA-TDNN; defaults are the released 7B values."""

    out_dim: int = 128
    channels: tuple[int, ...] = (256, 256, 256, 256, 768)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 64
    res2net_scale: int = 2
    se_channels: int = 64

    def __post_init__(self) -> None:
        for name in ("channels", "kernel_sizes", "dilations"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if not (len(self.channels) == len(self.kernel_sizes) == len(self.dilations)):
            raise ConfigError("dit enc_channels, enc_kernel_sizes and enc_dilations must have the same length")
        if self.channels[-1] != sum(self.channels[1:-1]):
            raise ConfigError(
                f"dit enc_channels[-1] ({self.channels[-1]}) must equal the sum of the SE-Res2Net widths "
                f"{list(self.channels[1:-1])}: the aggregation layer concatenates them"
            )

    @classmethod
    def from_hf_config(cls, dit_config: dict[str, Any]) -> ECAPAConfig:
        """Read the enc_* fields of a `dit_config` dict."""
        return cls(**hf_fields(cls, dit_config, _HF_NAMES, "dit_config"))

    def to_hf_config(self) -> dict[str, Any]:
        """The enc_* fields of a `dit_config` dict."""
        return {key: _json(getattr(self, name)) for name, key in _HF_NAMES.items()}


def _json(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _conv(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding="same", padding_mode="reflect")


class TDNN(nn.Module):
    """Conv1d + ReLU on [B, C, T]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Res2Net(nn.Module):
    """Channels split into `scale` groups; group i > 0 is convolved after adding group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(torch.chunk(x, self.scale, dim=1))
        outs = [parts[0]]
        prev: torch.Tensor | None = None
        for i, block in enumerate(self.blocks, start=1):
            prev = block(parts[i] if prev is None else parts[i] + prev)
            outs.append(prev)
        return torch.cat(outs, dim=1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, se_channels, 1)
        self.conv2 = _conv(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))
        return x * torch.sigmoid(self.conv2(s))


class SERes2NetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, scale: int, se_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.tdnn1 = TDNN(c_in, c_out, 1)
        self.res2net_block = Res2Net(c_out, scale, kernel, dilation)
        self.tdnn2 = TDNN(c_out, c_out, 1)
        self.se_block = SqueezeExcitation(c_out, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _mean_std(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and std over time of x [B, C, T] with weights w [B, C|1, T] summing to 1."""
    mean = (w * x).sum(dim=2)
    std = torch.sqrt((w * (x - mean[..., None]).pow(2)).sum(dim=2).clamp(eps))
    return mean, std


class AttentiveStatsPool(nn.Module):
    """Per-channel attention over time, conditioned on the global mean and std; returns [B, 2C, 1]."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = TDNN(3 * channels, attention_channels, 1)
        self.conv = _conv(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[-1]
        uniform = torch.full((1, 1, T), 1.0 / T, dtype=x.dtype, device=x.device)
        mean, std = _mean_std(x, uniform)
        ctx = torch.cat([x, mean[..., None].expand_as(x), std[..., None].expand_as(x)], dim=1)
        attn = torch.softmax(self.conv(torch.tanh(self.tdnn(ctx))), dim=2)
        mean, std = _mean_std(x, attn)
        return torch.cat([mean, std], dim=1)[..., None]


class ECAPATDNN(nn.Module):
    def __init__(self, cfg: ECAPAConfig, mel_dim: int) -> None:
        super().__init__()
        ch, ks, dil = cfg.channels, cfg.kernel_sizes, cfg.dilations
        blocks: list[nn.Module] = [TDNN(mel_dim, ch[0], ks[0], dil[0])]
        for i in range(1, len(ch) - 1):
            blocks.append(SERes2NetBlock(ch[i - 1], ch[i], cfg.res2net_scale, cfg.se_channels, ks[i], dil[i]))
        self.blocks = nn.ModuleList(blocks)
        self.mfa = TDNN(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatsPool(ch[-1], cfg.attention_channels)
        self.fc = _conv(2 * ch[-1], cfg.out_dim, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # [B, T, mel] -> [B, out_dim]
        x = mel.transpose(1, 2)
        outs = []
        for block in cast(list[nn.Module], self.blocks):
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs[1:], dim=1))
        return self.fc(self.asp(x)).squeeze(-1)
