"""Shapes of Qwen3-Omni's Code2Wav (`code2wav_config` in config.json); defaults are the released values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields, preset

# Our field -> its key in `code2wav_config` (transformers' Qwen3OmniMoeCode2WavConfig names).
_HF_NAMES: dict[str, str] = {
    "codebook_size": "codebook_size",
    "num_quantizers": "num_quantizers",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "attention_bias": "attention_bias",
    "sliding_window": "sliding_window",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
    "layer_scale_initial_scale": "layer_scale_initial_scale",
    "upsampling_ratios": "upsampling_ratios",
    "upsample_rates": "upsample_rates",
    "decoder_dim": "decoder_dim",
}


@dataclass
class Code2WavConfig:
    """Codec frames (12.5 Hz, `num_quantizers` codes each) -> 24 kHz waveform, 1920 samples per frame."""

    codebook_size: int = 2048
    num_quantizers: int = 16
    hidden_size: int = 1024
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    intermediate_size: int = 3072
    hidden_act: str = "silu"
    attention_bias: bool = False
    sliding_window: int = 72  # keys per query, itself included: 71 frames (5.7 s) back
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    layer_scale_initial_scale: float = 0.01
    upsampling_ratios: tuple[int, ...] = (2, 2)  # transposed conv + ConvNeXt stages at hidden_size
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)  # decoder blocks, each halving the channels
    decoder_dim: int = 1536

    def __post_init__(self) -> None:
        self.upsampling_ratios = tuple(int(r) for r in self.upsampling_ratios)
        self.upsample_rates = tuple(int(r) for r in self.upsample_rates)
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError(
                f"code2wav hidden_size ({self.hidden_size}) must split into num_attention_heads "
                f"({self.num_attention_heads}) heads of even width (rotary embeddings)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"code2wav num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_act != "silu":
            raise ConfigError(f"code2wav hidden_act {self.hidden_act!r} is not supported (only silu)")
        if self.sliding_window < 1:
            raise ConfigError(f"code2wav sliding_window must be >= 1, got {self.sliding_window}")
        if any(r < 1 for r in self.upsampling_ratios + self.upsample_rates):
            raise ConfigError("code2wav upsampling_ratios and upsample_rates must be >= 1")
        if self.decoder_dim < 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"code2wav decoder_dim ({self.decoder_dim}) must be >= 2**{len(self.upsample_rates)}: "
                "every decoder block halves the channels"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per codec frame (1920 = 80 ms at 24 kHz)."""
        return math.prod(self.upsampling_ratios + self.upsample_rates)

    @property
    def trailing_samples(self) -> int:
        """Samples a decode of n frames falls short of n * samples_per_frame (555 released).

        Each decoder block's transposed conv (kernel 2r, stride r) trims r outputs at its end: they also
        need the next input. Counted at the output rate: 8*60 + 5*12 + 4*3 + 3 = 555.
        """
        total, rate = 0, 1
        for r in reversed(self.upsample_rates):
            total += r * rate
            rate *= r
        return total

    def samples_for(self, frames: int) -> int:
        """Length of the whole-sequence decode of `frames` frames (0 for none)."""
        return max(frames * self.samples_per_frame - self.trailing_samples, 0)

    @classmethod
    def from_name(cls, name: str) -> Code2WavConfig:
        """Preset of the released shape: qwen3-omni-30b-a3b (Instruct, Thinking and Captioner share it)."""
        return preset(PRESETS, name, "code2wav")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Code2WavConfig:
        """Read `code2wav_config` (or a whole Qwen3-Omni config.json holding it)."""
        cfg = cfg.get("code2wav_config", cfg)
        kw = hf_fields(cls, cfg, _HF_NAMES, "code2wav_config")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"code2wav rope_type {rope['rope_type']!r} is not supported (only default)")
        theta = rope.get("rope_theta", cfg.get("rope_theta"))
        if theta is not None:
            kw["rope_theta"] = float(theta)
        return cls(**kw)

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key in _HF_NAMES.items():
            v = getattr(self, name)
            out[key] = list(v) if isinstance(v, tuple) else v
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return out


PRESETS: dict[str, Code2WavConfig] = {"qwen3-omni-30b-a3b": Code2WavConfig()}
