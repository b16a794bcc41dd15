"""Loading the speech half of a Qwen2.5-Omni checkpoint: `talker.*`, `token2wav.*` and `spk_dict.pt`.

The tensors keep the released key layout; this module maps them onto our modules, whose names are
shorter where the reference nests containers (`ff.ff.0` -> `ff.fc1`, `ups.3.0` -> `ups.3`, ...), and
reports missing or mis-shaped tensors by their checkpoint names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.model.encoders.weights import load_encoder_state_dict
from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.decoder import DecoderLM
from omni.model.loaders.hf import SafetensorsIndex, read_config
from omni.model.loaders.weights import build_decoder
from omni.model.talker import Talker, TalkerConfig
from omni.model.token2wav import Token2Wav, Token2WavConfig
from omni.model.voices import VoiceBank

Getter = Callable[[str], "torch.Tensor | None"]

# (checkpoint pattern, our name) applied in order to keys under token2wav.
_TOKEN2WAV_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^code2wav_dit_model\.time_embed\.time_mlp\.0\.", "dit.time_embed.fc1."),
        (r"^code2wav_dit_model\.time_embed\.time_mlp\.2\.", "dit.time_embed.fc2."),
        (r"^code2wav_dit_model\.text_embed\.codec_embed\.", "dit.codec_embed."),
        (r"^code2wav_dit_model\.input_embed\.proj\.", "dit.input_proj."),
        (r"^code2wav_dit_model\.input_embed\.spk_encoder\.", "dit.ecapa."),
        (r"^code2wav_dit_model\.transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"dit.blocks.\1.attn.to_out."),
        (r"^code2wav_dit_model\.transformer_blocks\.(\d+)\.ff\.ff\.0\.", r"dit.blocks.\1.ff.fc1."),
        (r"^code2wav_dit_model\.transformer_blocks\.(\d+)\.ff\.ff\.3\.", r"dit.blocks.\1.ff.fc2."),
        (r"^code2wav_dit_model\.transformer_blocks\.", "dit.blocks."),
        (r"^code2wav_dit_model\.", "dit."),
        (r"^code2wav_bigvgan_model\.ups\.(\d+)\.0\.", r"bigvgan.ups.\1."),
        (r"\.act\.(alpha|beta)$", r".\1"),
        (r"^code2wav_bigvgan_model\.", "bigvgan."),
    ]
]


def token2wav_key(name: str) -> str:
    """Our parameter name for a checkpoint key relative to `token2wav.`."""
    for pattern, repl in _TOKEN2WAV_RENAMES:
        name = pattern.sub(repl, name)
    return name


def load_token2wav(
    cfg: Token2WavConfig,
    names: Iterable[str],
    get: Getter,
    prefix: str = "token2wav.",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Token2Wav:
    """Token2Wav from checkpoint tensors. float32 by default: the reference runs token2wav in float32."""
    state = {}
    for full in names:
        if full.startswith(prefix):
            t = get(full)
            assert t is not None
            state[token2wav_key(full[len(prefix) :])] = t
    if not state:
        raise CheckpointError(f"no {prefix}* tensors: this checkpoint has no token2wav (speech output) weights")
    model = Token2Wav(cfg).to(dtype=dtype)
    load_encoder_state_dict(model, state, "token2wav")
    return model.to(device).eval()


def load_talker(
    cfg: TalkerConfig,
    get: Getter,
    prefix: str = "talker.",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Talker:
    """Talker from checkpoint tensors (`talker.model.*`, `talker.codec_head`, `talker.thinker_to_talker_proj`)."""
    C, V = cfg.decoder.hidden_size, cfg.decoder.vocab_size
    # The decoder's embed_tokens is unused (see Talker); a stride-0 placeholder costs no memory.
    placeholder = torch.zeros(1, C, dtype=dtype, device=device).expand(V, C)

    def dec_get(name: str) -> torch.Tensor | None:
        if name == "embed_tokens.weight":
            return placeholder
        if name == "lm_head.weight":
            return get(prefix + "codec_head.weight")
        return get(prefix + "model." + name)

    decoder: DecoderLM = build_decoder(cfg.decoder, dec_get, dtype, device, f"{prefix}model")
    talker = Talker(cfg, decoder=decoder)
    own = {
        "thinker_to_talker_proj.weight": prefix + "thinker_to_talker_proj.weight",
        "thinker_to_talker_proj.bias": prefix + "thinker_to_talker_proj.bias",
        "codec_embed.weight": prefix + "model.embed_tokens.weight",
    }
    params = dict(talker.named_parameters())
    with torch.no_grad():
        for ours, theirs in own.items():
            t = get(theirs)
            if t is None:
                raise CheckpointError(f"talker tensor {theirs!r} is missing")
            if tuple(t.shape) != tuple(params[ours].shape):
                raise CheckpointError(
                    f"talker tensor {theirs!r} has shape {list(t.shape)}, expected {list(params[ours].shape)}"
                )
            setattr(
                _owner(talker, ours),
                ours.rsplit(".", 1)[1],
                torch.nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False),
            )
    return talker.eval()


def _owner(module: torch.nn.Module, name: str) -> torch.nn.Module:
    return module.get_submodule(name.rsplit(".", 1)[0])


@dataclass
class SpeechModels:
    """Everything speech output needs besides the Thinker."""

    talker: Talker
    token2wav: Token2Wav
    voices: VoiceBank


def load_speech(
    directory: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    index: SafetensorsIndex | None = None,
) -> SpeechModels:
    """Talker (in `dtype`), token2wav (float32) and voices of a Qwen2.5-Omni checkpoint directory."""
    d = Path(directory)
    raw = read_config(d)
    if "talker_config" not in raw or "token2wav_config" not in raw:
        raise CheckpointError(f"{d}/config.json: no talker_config/token2wav_config (not a speech-capable checkpoint)")
    if raw.get("enable_audio_output") is False:
        raise CheckpointError(f"{d}/config.json: enable_audio_output is false (this checkpoint has no speech output)")
    try:
        tcfg = TalkerConfig.from_hf_config(raw["talker_config"])
        wcfg = Token2WavConfig.from_hf_config(raw["token2wav_config"])
    except ConfigError as e:
        raise CheckpointError(f"{d}/config.json: {e}") from None
    index = index or SafetensorsIndex(d)
    talker = load_talker(tcfg, index.get, device=device, dtype=dtype)
    token2wav = load_token2wav(wcfg, list(index.files), index.get, device=device)
    return SpeechModels(talker=talker, token2wav=token2wav, voices=VoiceBank.load(d / "spk_dict.pt"))
