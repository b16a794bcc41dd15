"""Test-only helpers: tiny transformers Qwen2.5-Omni / Qwen3-Omni encoders as parity references, re-initialised so
outputs are far from zero (the default std-0.02 init would make a 1e-4 comparison meaningless)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omni.model.encoders.config import AudioEncoderConfig, AuTEncoderConfig, Qwen3VisionConfig, VisionEncoderConfig


def randomize_(module: nn.Module, seed: int = 0) -> None:
    """Fan-in scaled normal matrices, norms around 1, biases around 0: O(1) activations through depth."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() > 1:
                p.copy_(noise / (p[0].numel() ** 0.5))
            elif name.endswith("weight"):  # LayerNorm / RMSNorm gains
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def _reference(config_cls: Any, model_cls: Any, cfg: Any, seed: int) -> Any:
    """transformers' encoder `model_cls` for our encoder config `cfg` (via its config.json section), SDPA
    attention, eval mode, re-initialised by randomize_ (the global RNG is left alone)."""
    hf_cfg = config_cls(**{k: v for k, v in cfg.to_hf_config().items() if k != "model_type"})
    hf_cfg._attn_implementation = "sdpa"
    model = model_cls(hf_cfg).eval()
    randomize_(model, seed)
    return model


def hf_audio_encoder(cfg: AudioEncoderConfig, seed: int = 0) -> Any:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    return _reference(Qwen2_5OmniAudioEncoderConfig, Qwen2_5OmniAudioEncoder, cfg, seed)


def hf_vision_encoder(cfg: VisionEncoderConfig, seed: int = 0) -> Any:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniVisionEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniVisionEncoder

    return _reference(Qwen2_5OmniVisionEncoderConfig, Qwen2_5OmniVisionEncoder, cfg, seed)


def hf_aut_encoder(cfg: AuTEncoderConfig, seed: int = 0) -> Any:
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    return _reference(Qwen3OmniMoeAudioEncoderConfig, Qwen3OmniMoeAudioEncoder, cfg, seed)


def hf_qwen3_vision_encoder(cfg: Qwen3VisionConfig, seed: int = 0) -> Any:
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

    return _reference(Qwen3OmniMoeVisionEncoderConfig, Qwen3OmniMoeVisionEncoder, cfg, seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
