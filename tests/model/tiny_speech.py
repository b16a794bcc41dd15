"""Test-only: tiny random transformers Talker and Token2Wav (the parity references), saved with
save_pretrained and assembled into a checkpoint directory in the released Qwen2.5-Omni layout
(config.json with talker_config/token2wav_config, `talker.*`/`token2wav.*` tensors, spk_dict.pt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omni.model.voices import Voice, VoiceBank
from tests.model.tiny_checkpoint import random_model, use_sdpa

THINKER_VOCAB = 200
THINKER_WIDTH = 32
SPEAKER_BOS = {"Chelsie": 176, "Ethan": 177}
TEXT_PAD, TEXT_START, TEXT_END = 173, 174, 175

TALKER: dict[str, Any] = dict(
    vocab_size=64,
    embedding_size=THINKER_WIDTH,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 2, 2]),
    tts_codec_start_token_id=60,
    tts_codec_end_token_id=61,
    tts_codec_pad_token_id=62,
    tts_codec_mask_token_id=63,
    tts_text_start_token_id=TEXT_START,
    tts_text_end_token_id=TEXT_END,
    tts_text_pad_token_id=TEXT_PAD,
    spatial_merge_size=2,
)

DIT: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    head_dim=16,
    ff_mult=2,
    emb_dim=16,
    block_size=24,
    look_ahead_layers=[2],
    look_backward_layers=[0, 3],
    repeats=2,
    num_embeds=64,
    mel_dim=80,
    enc_emb_dim=16,
    enc_dim=16,
    enc_channels=[32, 32, 32, 32, 96],
    enc_kernel_sizes=[5, 3, 3, 3, 1],
    enc_dilations=[1, 2, 3, 4, 1],
    enc_attention_channels=8,
    enc_res2net_scale=2,
    enc_se_channels=8,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0),
)
BIGVGAN: dict[str, Any] = dict(
    mel_dim=80,
    upsample_initial_channel=64,
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5]] * 3,
    upsample_rates=[5, 3, 2, 2, 2, 2],
    upsample_kernel_sizes=[11, 7, 4, 4, 4, 4],
)


def hf_talker(seed: int = 0) -> Any:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTalkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniTalkerForConditionalGeneration

    cfg = Qwen2_5OmniTalkerConfig(**TALKER)
    use_sdpa(cfg)
    return random_model(Qwen2_5OmniTalkerForConditionalGeneration, cfg, seed)


def hf_token2wav(seed: int = 0) -> Any:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniToken2WavConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniToken2WavModel

    cfg = Qwen2_5OmniToken2WavConfig(dit_config=DIT, bigvgan_config=BIGVGAN)
    use_sdpa(cfg)
    model = random_model(Qwen2_5OmniToken2WavModel, cfg, seed)
    with torch.no_grad():  # snake log-scales near 0 (alpha, beta ~ e^0); 0.2-std noise keeps them varied
        for name, p in model.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.mul_(0.5)
        # Keep the waveform inside the final clamp to [-1, 1] (else the comparison would see mostly +-1).
        model.code2wav_bigvgan_model.conv_post.weight.mul_(0.1)
    return model


def tiny_voices(seed: int = 0, ref_frames: int = 60) -> VoiceBank:
    gen = torch.Generator().manual_seed(seed)
    return VoiceBank(
        {
            name: Voice(
                name=name,
                bos_token=bos,
                cond=torch.randn(1, DIT["enc_emb_dim"], generator=gen),
                ref_mel=torch.randn(1, ref_frames, 80, generator=gen) - 4.0,
            )
            for name, bos in SPEAKER_BOS.items()
        }
    )


def _saved(model: Any, directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    model.save_pretrained(directory, safe_serialization=True)
    config = json.loads((directory / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            tensors |= {k: h.get_tensor(k) for k in h.keys()}
    return config, tensors


def write_speech_checkpoint(tmp: Path, talker: Any, token2wav: Any, voices: VoiceBank) -> Path:
    """save_pretrained both references, then assemble them under the full model's prefixes."""
    tcfg, ttensors = _saved(talker, tmp / "hf_talker")
    wcfg, wtensors = _saved(token2wav, tmp / "hf_token2wav")
    out = tmp / "omni"
    out.mkdir()
    config = {
        "model_type": "qwen2_5_omni",
        "enable_audio_output": True,
        "talker_config": tcfg,
        "token2wav_config": wcfg,
    }
    (out / "config.json").write_text(json.dumps(config))
    tensors = {f"talker.{k}": v for k, v in ttensors.items()} | {f"token2wav.{k}": v for k, v in wtensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    voices.save(out / "spk_dict.pt")
    return out
