"""Qwen3-Omni (MoE) config.json: the Thinker, Talker and Code2Wav sections and the top-level token ids.

Layout of the released `Qwen3-Omni-30B-A3B-Instruct` config.json (shared/reference/qwen_omni.md sections 2.4,
2.5 and 2.8): `thinker_config{text_config, audio_config, vision_config, media token ids,
position_id_per_seconds}`, `talker_config{text_config, code_predictor_config, accept_hidden_layer, codec ids,
speaker_id, ...}`, `code2wav_config`, and top-level ChatML / TTS ids. The model sections (text, audio, vision,
code predictor, code2wav) are kept as the raw dicts config.json holds, for the decoder, encoder and Code2Wav
configs to read; the fields the assembly itself needs (ids, timing, cross-part shapes) are typed here.

The `-Thinking` and `-Captioner` checkpoints have no talker: `talker` and `code2wav` are None there.
Dataclass defaults are not transformers' (several of those differ from the release, section 4.2 item 5):
every field a released config.json carries is required, so a missing key is an error rather than a guess.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omni.model.encoders.config import aut_token_count
from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields
from omni.model.tmrope import MultimodalTokenIds, TMRoPEConfig

ARCHITECTURE = "Qwen3OmniMoeForConditionalGeneration"
MODEL_TYPE = "qwen3_omni_moe"
AUT_N_WINDOW = 50  # audio_config.n_window: AuT conv chunks of 2 * 50 mel frames = 1 s
SPATIAL_MERGE = TMRoPEConfig.spatial_merge_size  # vision 2x2 patch merge, shared with Qwen2.5


def _section(raw: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    sub = raw.get(key)
    if not isinstance(sub, dict):
        raise ConfigError(f"{what} is missing the section {key!r}")
    return sub


def _model_sections(
    part: dict[str, Any], what: str, keys: tuple[str, ...], text_keys: tuple[str, ...]
) -> dict[str, Any]:
    """Copies of the raw model sections `keys` of `part` (`what` names it); its text_config must hold
    `text_keys`, the fields the assembly reads from it."""
    subs = {k: copy.deepcopy(_section(part, k, what)) for k in keys}
    for key in text_keys:
        if key not in subs["text_config"]:
            raise ConfigError(f"{what}.text_config is missing the field {key!r}")
    return subs


def qwen3_rope(position_id_per_seconds: int, spatial_merge_size: int) -> TMRoPEConfig:
    """TM-RoPE timing with the Qwen3-Omni rules (the Thinker's and the Talker's position ids)."""
    return TMRoPEConfig(
        position_id_per_seconds=position_id_per_seconds, spatial_merge_size=spatial_merge_size, style="qwen3"
    )


@dataclass
class Qwen3ThinkerConfig:
    """`thinker_config`: the raw text/audio/vision sections plus media token ids and TM-RoPE timing."""

    text_config: dict[str, Any]
    audio_config: dict[str, Any]
    vision_config: dict[str, Any]
    audio_token_id: int
    image_token_id: int
    video_token_id: int
    audio_start_token_id: int
    audio_end_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    position_id_per_seconds: int
    user_token_id: int | None = None
    tie_word_embeddings: bool = False

    IDS = {
        "audio_token_id": "audio_token_id",
        "image_token_id": "image_token_id",
        "video_token_id": "video_token_id",
        "audio_start_token_id": "audio_start_token_id",
        "audio_end_token_id": "audio_end_token_id",
        "vision_start_token_id": "vision_start_token_id",
        "vision_end_token_id": "vision_end_token_id",
        "position_id_per_seconds": "position_id_per_seconds",
    }

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])

    @property
    def spatial_merge_size(self) -> int:
        return int(self.vision_config.get("spatial_merge_size", SPATIAL_MERGE))

    @property
    def n_window(self) -> int:
        """AuT conv chunk half-width in mel frames (50: 1-s chunks)."""
        return int(self.audio_config.get("n_window", AUT_N_WINDOW))

    @property
    def tokens(self) -> MultimodalTokenIds:
        return MultimodalTokenIds(
            audio=self.audio_token_id,
            image=self.image_token_id,
            video=self.video_token_id,
            audio_start=self.audio_start_token_id,
            audio_end=self.audio_end_token_id,
            vision_start=self.vision_start_token_id,
            vision_end=self.vision_end_token_id,
        )

    @property
    def rope(self) -> TMRoPEConfig:
        return qwen3_rope(self.position_id_per_seconds, self.spatial_merge_size)

    def audio_tokens(self, n_mel_frames: int) -> int:
        return aut_token_count(n_mel_frames, self.n_window)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Qwen3ThinkerConfig:
        """Read the `thinker_config` section (or a whole config.json containing it)."""
        th = cfg.get("thinker_config", cfg)
        what = "thinker_config"
        keys = ("text_config", "audio_config", "vision_config")
        subs = _model_sections(th, what, keys, ("hidden_size", "num_hidden_layers", "vocab_size"))
        kw = hf_fields(cls, th, cls.IDS, what, required=tuple(cls.IDS))
        kw |= hf_fields(cls, th, {"user_token_id": "user_token_id", "tie_word_embeddings": "tie_word_embeddings"}, what)
        return cls(**subs, **kw)

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_type": "qwen3_omni_moe_thinker",
            "text_config": copy.deepcopy(self.text_config),
            "audio_config": copy.deepcopy(self.audio_config),
            "vision_config": copy.deepcopy(self.vision_config),
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        out |= {key: getattr(self, name) for name, key in self.IDS.items()}
        if self.user_token_id is not None:
            out["user_token_id"] = self.user_token_id
        return out


@dataclass
class Qwen3TalkerConfig:
    """`talker_config`: the raw MoE text and code-predictor sections, codec ids, speakers and the thinker link."""

    text_config: dict[str, Any]
    code_predictor_config: dict[str, Any]
    num_code_groups: int
    thinker_hidden_size: int
    accept_hidden_layer: int
    codec_pad_id: int
    codec_bos_id: int
    codec_eos_token_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    speaker_id: dict[str, int]
    position_id_per_seconds: int
    audio_token_id: int
    image_token_id: int
    video_token_id: int
    audio_start_token_id: int
    vision_start_token_id: int
    spatial_merge_size: int = SPATIAL_MERGE

    FIELDS = (
        "num_code_groups",
        "thinker_hidden_size",
        "accept_hidden_layer",
        "codec_pad_id",
        "codec_bos_id",
        "codec_eos_token_id",
        "codec_nothink_id",
        "codec_think_bos_id",
        "codec_think_eos_id",
        "speaker_id",
        "position_id_per_seconds",
        "audio_token_id",
        "image_token_id",
        "video_token_id",
        "audio_start_token_id",
        "vision_start_token_id",
    )

    def __post_init__(self) -> None:
        if not self.speaker_id:
            raise ConfigError("talker_config.speaker_id names no speaker")
        self.speaker_id = {str(k).lower(): int(v) for k, v in self.speaker_id.items()}
        groups = self.code_predictor_config.get("num_code_groups")
        if groups is not None and int(groups) != self.num_code_groups:
            raise ConfigError(
                f"talker_config.num_code_groups {self.num_code_groups} != "
                f"code_predictor_config.num_code_groups {groups}"
            )

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def codec_vocab_size(self) -> int:
        return int(self.text_config["vocab_size"])

    @property
    def rope(self) -> TMRoPEConfig:
        return qwen3_rope(self.position_id_per_seconds, self.spatial_merge_size)

    def speaker(self, name: str) -> int:
        """Codec id of a speaker by case-insensitive name; a clear error names the known ones."""
        try:
            return self.speaker_id[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self.speaker_id))
            raise ConfigError(f"unknown speaker {name!r}; this checkpoint has {known}") from None

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Qwen3TalkerConfig:
        """Read the `talker_config` section (or a whole config.json containing it)."""
        tk = cfg.get("talker_config", cfg)
        what = "talker_config"
        subs = _model_sections(tk, what, ("text_config", "code_predictor_config"), ("hidden_size", "vocab_size"))
        names = {name: name for name in cls.FIELDS}
        kw = hf_fields(cls, tk, names, what, required=cls.FIELDS)
        kw |= hf_fields(cls, tk, {"spatial_merge_size": "spatial_merge_size"}, what)
        return cls(**subs, **kw)

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_type": "qwen3_omni_moe_talker",
            "text_config": copy.deepcopy(self.text_config),
            "code_predictor_config": copy.deepcopy(self.code_predictor_config),
            "spatial_merge_size": self.spatial_merge_size,
        }
        out |= {name: copy.deepcopy(getattr(self, name)) for name in self.FIELDS}
        return out


@dataclass
class Qwen3OmniConfig:
    """A whole Qwen3-Omni config.json: Thinker, optional Talker and Code2Wav, ChatML and TTS token ids."""

    thinker: Qwen3ThinkerConfig
    talker: Qwen3TalkerConfig | None
    code2wav_config: dict[str, Any] | None
    im_start_token_id: int
    im_end_token_id: int
    system_token_id: int
    user_token_id: int
    assistant_token_id: int
    tts_pad_token_id: int
    tts_bos_token_id: int
    tts_eos_token_id: int
    enable_audio_output: bool = True
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # top-level keys we do not interpret, kept for the round trip

    IDS = (
        "im_start_token_id",
        "im_end_token_id",
        "system_token_id",
        "user_token_id",
        "assistant_token_id",
        "tts_pad_token_id",
        "tts_bos_token_id",
        "tts_eos_token_id",
    )

    def __post_init__(self) -> None:
        if self.talker is None:
            return
        if self.code2wav_config is None:
            raise ConfigError("config.json has a talker_config but no code2wav_config")
        tk, th = self.talker, self.thinker
        if tk.thinker_hidden_size != th.hidden_size:
            raise ConfigError(
                f"talker_config.thinker_hidden_size {tk.thinker_hidden_size} != thinker hidden size {th.hidden_size}"
            )
        if not 0 <= tk.accept_hidden_layer <= th.num_layers:
            raise ConfigError(
                f"talker_config.accept_hidden_layer {tk.accept_hidden_layer} is outside 0..{th.num_layers} "
                "(the Thinker's layer count)"
            )
        quantizers = self.code2wav_config.get("num_quantizers")
        if quantizers is not None and int(quantizers) != tk.num_code_groups:
            raise ConfigError(
                f"code2wav_config.num_quantizers {quantizers} != talker_config.num_code_groups {tk.num_code_groups}"
            )

    @property
    def speaks(self) -> bool:
        """Whether this checkpoint can produce audio (Instruct) or only text (Thinking, Captioner)."""
        return self.talker is not None and self.enable_audio_output

    @classmethod
    def from_name(cls, name: str) -> Qwen3OmniConfig:
        """Real shapes for random-weight benchmarks: "qwen3-omni-30b-a3b" (Instruct, with talker) or
        "qwen3-omni-30b-a3b-thinking" (thinker only)."""
        try:
            raw = PRESETS[name]()
        except KeyError:
            raise ConfigError(f"unknown Qwen3-Omni preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
        return cls.from_hf_config(raw)

    @classmethod
    def from_hf_config(cls, raw: dict[str, Any]) -> Qwen3OmniConfig:
        """Read a whole Qwen3-Omni config.json dict."""
        what = "config.json"
        thinker = Qwen3ThinkerConfig.from_hf_config(_section(raw, "thinker_config", what))
        talker = Qwen3TalkerConfig.from_hf_config(raw["talker_config"]) if raw.get("talker_config") else None
        c2w = raw.get("code2wav_config")
        if c2w is not None and not isinstance(c2w, dict):
            raise ConfigError("config.json: code2wav_config must be a JSON object")
        names = {name: name for name in cls.IDS} | {"enable_audio_output": "enable_audio_output"}
        kw = hf_fields(cls, raw, names, what, required=cls.IDS)
        kw |= hf_fields(cls, raw, {"dtype": ("dtype", "torch_dtype")}, what)
        known = {"thinker_config", "talker_config", "code2wav_config", "dtype", "torch_dtype", *names}
        extra = {k: copy.deepcopy(v) for k, v in raw.items() if k not in known}
        return cls(thinker, talker, copy.deepcopy(c2w) if c2w is not None else None, **kw, extra=extra)

    def to_hf_config(self) -> dict[str, Any]:
        """The config.json dict that `from_hf_config` reads back to an equal config."""
        out: dict[str, Any] = copy.deepcopy(self.extra)
        out |= {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
        out["thinker_config"] = self.thinker.to_hf_config()
        if self.talker is not None:
            out["talker_config"] = self.talker.to_hf_config()
        if self.code2wav_config is not None:
            out["code2wav_config"] = copy.deepcopy(self.code2wav_config)
        out |= {name: getattr(self, name) for name in self.IDS}
        out["enable_audio_output"] = self.enable_audio_output
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out


# ---- presets: the released 30B-A3B shapes (shared/reference/qwen_omni.md sections 0, 2.1-2.6, 2.8) -------------

_INTERLEAVED_MROPE = {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True, "rope_theta": 1e6}


def _thinker_30b_a3b() -> dict[str, Any]:
    return {
        "text_config": {
            "model_type": "qwen3_omni_moe_text",
            "vocab_size": 152064,
            "hidden_size": 2048,
            "intermediate_size": 768,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 65536,
            "attention_bias": False,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "shared_expert_intermediate_size": 0,
            "tie_word_embeddings": False,
            "rope_parameters": dict(_INTERLEAVED_MROPE),
        },
        "audio_config": {
            "model_type": "qwen3_omni_moe_audio_encoder",
            "num_mel_bins": 128,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "d_model": 1280,
            "output_dim": 2048,
            "n_window": 50,
            "n_window_infer": 800,
            "conv_chunksize": 500,
            "downsample_hidden_size": 480,
            "max_source_positions": 1500,
            "activation_function": "gelu",
            "scale_embedding": False,
        },
        "vision_config": {
            "model_type": "qwen3_omni_moe_vision_encoder",
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 2048,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        "audio_token_id": 151675,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "audio_start_token_id": 151669,
        "audio_end_token_id": 151670,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "user_token_id": 872,
        "position_id_per_seconds": 13,
        "seconds_per_chunk": 2,
        "tie_word_embeddings": False,
    }


def _talker_30b_a3b() -> dict[str, Any]:
    return {
        "text_config": {
            "model_type": "qwen3_omni_moe_talker_text",
            "vocab_size": 3072,
            "hidden_size": 1024,
            "intermediate_size": 2048,
            "num_hidden_layers": 20,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "head_dim": 128,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 65536,
            "num_experts": 128,
            "num_experts_per_tok": 6,
            "moe_intermediate_size": 384,
            "shared_expert_intermediate_size": 768,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "rope_parameters": dict(_INTERLEAVED_MROPE),
        },
        "code_predictor_config": {
            "model_type": "qwen3_omni_moe_talker_code_predictor",
            "vocab_size": 2048,
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 5,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
            "num_code_groups": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        },
        "num_code_groups": 16,
        "thinker_hidden_size": 2048,
        "accept_hidden_layer": 24,
        "codec_pad_id": 2148,
        "codec_bos_id": 2149,
        "codec_eos_token_id": 2150,
        "codec_nothink_id": 2155,
        "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157,
        "speaker_id": {"chelsie": 2301, "ethan": 2302, "aiden": 2303},
        "audio_token_id": 151675,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "audio_start_token_id": 151669,
        "audio_end_token_id": 151670,
        "vision_start_token_id": 151652,
        "position_id_per_seconds": 13,
        "seconds_per_chunk": 2,
        "spatial_merge_size": 2,
    }


def _code2wav_30b_a3b() -> dict[str, Any]:
    return {
        "codebook_size": 2048,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "sliding_window": 72,
        "rms_norm_eps": 1e-5,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "num_quantizers": 16,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
        "decoder_dim": 1536,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000},
    }


_TOP_IDS = {
    "im_start_token_id": 151644,
    "im_end_token_id": 151645,
    "system_token_id": 8948,
    "user_token_id": 872,
    "assistant_token_id": 77091,
    "tts_pad_token_id": 151671,
    "tts_bos_token_id": 151672,
    "tts_eos_token_id": 151673,
}


def _instruct_30b_a3b() -> dict[str, Any]:
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "thinker_config": _thinker_30b_a3b(),
        "talker_config": _talker_30b_a3b(),
        "code2wav_config": _code2wav_30b_a3b(),
        "enable_audio_output": True,
        "dtype": "bfloat16",
        **_TOP_IDS,
    }


def _thinking_30b_a3b() -> dict[str, Any]:
    raw = _instruct_30b_a3b()
    del raw["talker_config"], raw["code2wav_config"]
    raw["enable_audio_output"] = False
    return raw


PRESETS = {"qwen3-omni-30b-a3b": _instruct_30b_a3b, "qwen3-omni-30b-a3b-thinking": _thinking_30b_a3b}
