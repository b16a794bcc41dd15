"""Configs of the Thinker's audio and vision encoders: dataclasses with named presets, read from and written
to the `audio_config` / `vision_config` sections of a Qwen2.5-Omni or Qwen3-Omni config.json.

Real shapes (shared/reference/qwen_omni.md sections 1.2, 1.3): the audio encoder is Whisper-large-v3-like
(32 layers, d 1280, 20 heads, FFN 5120) and the vision encoder is the Qwen2.5-VL ViT (32 layers, d 1280,
16 heads, SwiGLU 3420); only the output width differs between 3B (2048) and 7B (3584), because both project
into the Thinker's hidden size. Qwen3-Omni (section 2.2, 2.3) replaces them with the AuT audio encoder
(`AuTEncoderConfig`) and the Qwen3-VL ViT with DeepStack (`Qwen3VisionConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields, preset


def _section(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    """Accept the encoder section itself, a thinker_config dict, or a whole Qwen2.5-Omni config.json."""
    if "thinker_config" in cfg:
        cfg = cfg["thinker_config"]
    if key in cfg:
        cfg = cfg[key]
    if not isinstance(cfg, dict):
        raise ConfigError(f"config section {key!r} must be a JSON object, got {type(cfg).__name__}")
    return cfg


# Our field -> its key in `audio_config`: both audio encoders keep Whisper's names in config.json.
_WHISPER_NAMES: dict[str, str] = {
    "num_mel_bins": "num_mel_bins",
    "num_layers": "encoder_layers",
    "hidden_size": "d_model",
    "num_heads": "encoder_attention_heads",
    "ffn_size": "encoder_ffn_dim",
}


class _AudioConfig:
    """What the two audio encoders share: Whisper's key names in config.json (`_HF_NAMES`, in config.json order),
    gelu, sinusoidal positions (an even width), no embedding scale. Each family declares its fields as a
    dataclass and adds its own checks after these."""

    num_layers: int
    hidden_size: int
    num_heads: int
    activation: str

    _MODEL_TYPE: ClassVar[str]
    _FAMILY: ClassVar[str]  # names the checkpoint family in errors
    _HF_NAMES: ClassVar[dict[str, str]]

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"audio hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if self.hidden_size % 2:
            raise ConfigError(
                f"audio hidden_size (d_model) must be even for the sinusoidal embedding: {self.hidden_size}"
            )
        if self.activation != "gelu":
            raise ConfigError(f"audio activation_function {self.activation!r} is not supported (only gelu)")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Self:
        """Read the `audio_config` section (or a whole config.json / thinker_config containing it)."""
        c = _section(cfg, "audio_config")
        if c.get("scale_embedding"):
            raise ConfigError(f"audio scale_embedding=true is not supported ({cls._FAMILY} uses false)")
        required = ("num_layers", "hidden_size", "num_heads", "ffn_size", "output_dim")
        return cls(**hf_fields(cls, c, cls._HF_NAMES, "audio_config", required))

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self._MODEL_TYPE}
        out |= {key: getattr(self, name) for name, key in self._HF_NAMES.items()}
        out["scale_embedding"] = False
        return out


@dataclass
class AudioEncoderConfig(_AudioConfig):
    """Whisper-style block-wise audio encoder (Qwen2.5-Omni `audio_config`).

    A block is `2 * n_window` mel frames (200 frames = 2 s at the 10 ms hop); conv2 halves it to 100
    frames and the final average pool halves again, so a full block yields 50 tokens (25 Hz, 40 ms/token).
    """

    num_mel_bins: int = 128
    num_layers: int = 32
    hidden_size: int = 1280
    num_heads: int = 20
    ffn_size: int = 5120
    n_window: int = 100
    max_source_positions: int = 1500
    output_dim: int = 3584
    activation: str = "gelu"

    _MODEL_TYPE: ClassVar[str] = "qwen2_5_omni_audio_encoder"
    _FAMILY: ClassVar[str] = "Qwen2.5-Omni"
    _HF_NAMES: ClassVar[dict[str, str]] = _WHISPER_NAMES | {
        "n_window": "n_window",
        "max_source_positions": "max_source_positions",
        "output_dim": "output_dim",
        "activation": "activation_function",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_window > self.max_source_positions:
            raise ConfigError(
                f"n_window ({self.n_window}) exceeds max_source_positions ({self.max_source_positions}): "
                "a block's positional embedding would run off the table"
            )

    @property
    def block_frames(self) -> int:
        """Mel frames per encoder block (200 = 2 s)."""
        return 2 * self.n_window

    @property
    def tokens_per_block(self) -> int:
        return audio_token_count(self.block_frames)

    @classmethod
    def from_name(cls, name: str) -> AudioEncoderConfig:
        return preset(AUDIO_PRESETS, name, "audio encoder")


def audio_token_count(n_mel_frames: int) -> int:
    """Encoder tokens for `n_mel_frames` mel frames: conv2 (stride 2) then the pair pool (3 s -> 75)."""
    after_conv = (n_mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


@dataclass
class _ViTConfig:
    """What the two Qwen ViTs share: patch embedding over 2-frame temporal patches, 2x2 patch merging into one LLM
    token, axial 2-D rotary angles, a projection into the Thinker's width. Each family adds its own fields, its
    HF key names (`_HF_EXTRA`) and checks (`_check`)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    rope_theta: float
    hidden_act: str

    _MODEL_TYPE: ClassVar[str]
    _ACT: ClassVar[str]  # the one activation supported
    _HF_EXTRA: ClassVar[tuple[str, ...]]  # the family's own fields, under the same names in config.json

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 4:
            raise ConfigError("vision head_dim must be a multiple of 4: its rotary angles split into h and w halves")
        if self.hidden_act != self._ACT:
            raise ConfigError(f"vision hidden_act {self.hidden_act!r} is not supported (only {self._ACT})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_factor(self) -> int:
        """Side of one LLM token in pixels (28 for Qwen2.5, 32 for Qwen3): resized frames are multiples of it."""
        return self.patch_size * self.spatial_merge_size

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: channels x temporal patch x patch x patch (3*2*14*14 = 1176 for Qwen2.5)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def _from_hf(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments from the `vision_config` section (or a whole config.json / thinker_config holding it).

        transformers' dataclass defaults (hidden_size 3584 for Qwen2.5) are not the checkpoint's values, so the
        shape fields are required here rather than defaulted."""
        c = _section(cfg, "vision_config")
        names: dict[str, str | tuple[str, ...]] = {k: k for k in cls._hf_names()}
        names["in_channels"] = ("in_channels", "in_chans")
        names["rope_theta"] = "rope_theta"  # older configs: top level; newer: in rope_parameters (wins)
        required = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size")
        kw = hf_fields(cls, c, names, "vision_config", required)
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if "rope_theta" in rope:
            kw["rope_theta"] = float(rope["rope_theta"])
        return kw

    @classmethod
    def _hf_names(cls) -> tuple[str, ...]:
        """The fields config.json holds under their own names (rope_theta goes in rope_parameters)."""
        return ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                "temporal_patch_size", "spatial_merge_size", *cls._HF_EXTRA, "out_hidden_size", "hidden_act")

    def to_hf_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self._MODEL_TYPE}
        for name in self._hf_names():
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        out["rope_parameters"] = {"rope_type": "axial", "rope_theta": self.rope_theta}
        return out


@dataclass
class VisionEncoderConfig(_ViTConfig):
    """Qwen2.5-VL ViT as used by Qwen2.5-Omni (`vision_config`).

    14-px patches over 2-frame temporal patches; 2x2 patches merge into one LLM token (28x28 px);
    112-px windows = 4x4 merged tokens = 8x8 patches; the blocks in `fullatt_block_indexes` attend over
    the whole frame instead.
    """

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = field(default=(7, 15, 23, 31))
    rms_norm_eps: float = 1e-6

    _MODEL_TYPE: ClassVar[str] = "qwen2_5_omni_vision_encoder"
    _ACT: ClassVar[str] = "silu"
    _HF_EXTRA: ClassVar[tuple[str, ...]] = ("window_size", "fullatt_block_indexes")

    def __post_init__(self) -> None:
        self.fullatt_block_indexes = tuple(int(i) for i in self.fullatt_block_indexes)
        super().__post_init__()
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ConfigError(
                f"window_size ({self.window_size}) must be a multiple of patch_size * spatial_merge_size "
                f"({self.patch_size * self.spatial_merge_size})"
            )

    @property
    def window_tokens(self) -> int:
        """Merged tokens per window side (112 / 28 = 4)."""
        return self.window_size // self.image_factor

    @classmethod
    def from_name(cls, name: str) -> VisionEncoderConfig:
        return preset(VISION_PRESETS, name, "vision encoder")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> VisionEncoderConfig:
        """Read the `vision_config` section (or a whole Qwen2.5-Omni config.json containing it)."""
        return cls(**cls._from_hf(cfg))


AUDIO_PRESETS: dict[str, AudioEncoderConfig] = {
    "qwen2.5-omni-7b": AudioEncoderConfig(output_dim=3584),
    "qwen2.5-omni-3b": AudioEncoderConfig(output_dim=2048),
    # Tests: 2 layers of d 32 keep a parity run well under a second on 2 CPU cores.
    "tiny": AudioEncoderConfig(
        num_mel_bins=128, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, output_dim=48
    ),
}

VISION_PRESETS: dict[str, VisionEncoderConfig] = {
    "qwen2.5-omni-7b": VisionEncoderConfig(out_hidden_size=3584),
    "qwen2.5-omni-3b": VisionEncoderConfig(out_hidden_size=2048),
    # Tests: 3 blocks with the middle one full-attention exercise both attention kinds.
    "tiny": VisionEncoderConfig(
        depth=3, hidden_size=32, intermediate_size=48, num_heads=2, fullatt_block_indexes=(1,), out_hidden_size=40
    ),
}


# ---- Qwen3-Omni ----------------------------------------------------------------------------------------------


def _stem_size(n: int) -> int:
    """Length after one Conv2d(3x3, stride 2, padding 1)."""
    return (n - 1) // 2 + 1


@dataclass
class AuTEncoderConfig(_AudioConfig):
    """Qwen3-Omni's AuT audio encoder (`thinker_config.audio_config`, transformers'
    Qwen3OmniMoeAudioEncoderConfig).

    A chunk is `2 * n_window` mel frames (100 = 1 s); three stride-2 Conv2d layers shrink it 8x in time and
    frequency (13 tokens per full chunk, 12.5 Hz). Attention runs inside windows of `n_window_infer` frames
    (800 = 8 chunks = 104 tokens = 8 s), counted from the start of the clip. `conv_chunksize` only bounds
    how many chunks transformers convolves at once (memory); it is kept for the round trip, and our stem
    runs one attention window (8 chunks) at a time anyway.
    """

    num_mel_bins: int = 128
    num_layers: int = 32
    hidden_size: int = 1280
    num_heads: int = 20
    ffn_size: int = 5120
    n_window: int = 50
    n_window_infer: int = 800
    conv_chunksize: int = 500
    downsample_hidden_size: int = 480
    max_source_positions: int = 1500
    output_dim: int = 2048
    activation: str = "gelu"

    _MODEL_TYPE: ClassVar[str] = "qwen3_omni_moe_audio_encoder"
    _FAMILY: ClassVar[str] = "Qwen3-Omni"
    _HF_NAMES: ClassVar[dict[str, str]] = _WHISPER_NAMES | {
        "n_window": "n_window",
        "n_window_infer": "n_window_infer",
        "conv_chunksize": "conv_chunksize",
        "downsample_hidden_size": "downsample_hidden_size",
        "max_source_positions": "max_source_positions",
        "output_dim": "output_dim",
        "activation": "activation_function",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_window <= 0 or self.n_window_infer <= 0 or self.n_window_infer % self.chunk_frames:
            raise ConfigError(
                f"n_window_infer ({self.n_window_infer}) must be a positive multiple of 2 * n_window "
                f"({self.chunk_frames}): attention windows are whole conv chunks"
            )
        if self.tokens_per_chunk > self.max_source_positions:
            raise ConfigError(
                f"a chunk's {self.tokens_per_chunk} tokens exceed max_source_positions ({self.max_source_positions})"
            )

    @property
    def chunk_frames(self) -> int:
        """Mel frames per conv chunk (100 = 1 s)."""
        return 2 * self.n_window

    @property
    def tokens_per_chunk(self) -> int:
        return aut_token_count(self.chunk_frames, self.n_window)

    @property
    def chunks_per_window(self) -> int:
        return self.n_window_infer // self.chunk_frames

    @property
    def window_tokens(self) -> int:
        """Tokens per full attention window (104 = 8 s in the released config)."""
        return self.tokens_per_chunk * self.chunks_per_window

    @property
    def freq_after_stem(self) -> int:
        """Mel bins after the three stride-2 convs (128 -> 16)."""
        return _stem_size(_stem_size(_stem_size(self.num_mel_bins)))

    @classmethod
    def from_name(cls, name: str) -> AuTEncoderConfig:
        return preset(AUT_PRESETS, name, "AuT audio encoder")


def aut_token_count(n_mel_frames: int, n_window: int = 50) -> int:
    """AuT tokens for `n_mel_frames` frames: 13 per full 100-frame chunk plus the stem of the tail (3 s -> 39)."""
    if n_mel_frames < 0:
        raise ValueError(f"negative mel frame count {n_mel_frames}")
    chunk = 2 * n_window
    full, tail = divmod(n_mel_frames, chunk)
    return full * aut_token_count_chunk(chunk) + (aut_token_count_chunk(tail) if tail else 0)


def aut_token_count_chunk(n_frames: int) -> int:
    """Tokens of one conv chunk of `n_frames` (> 0) frames: three stride-2 convs."""
    return _stem_size(_stem_size(_stem_size(n_frames)))


@dataclass
class Qwen3VisionConfig(_ViTConfig):
    """Qwen3-Omni's vision encoder (Qwen3-VL ViT, `thinker_config.vision_config`).

    16-px patches over 2-frame temporal patches, 2x2 merged into one LLM token (32x32 px); full attention
    within each temporal patch; a learned 48x48 position table resized to each grid; DeepStack mergers
    read the hidden states after the blocks in `deepstack_visual_indexes`.
    """

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2048
    rope_theta: float = 10000.0
    hidden_act: str = "gelu_pytorch_tanh"
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = field(default=(8, 16, 24))

    _MODEL_TYPE: ClassVar[str] = "qwen3_omni_moe_vision_encoder"
    _ACT: ClassVar[str] = "gelu_pytorch_tanh"
    _HF_EXTRA: ClassVar[tuple[str, ...]] = ("num_position_embeddings", "deepstack_visual_indexes")

    def __post_init__(self) -> None:
        self.deepstack_visual_indexes = tuple(int(i) for i in self.deepstack_visual_indexes)
        super().__post_init__()
        side = math.isqrt(self.num_position_embeddings)
        if side * side != self.num_position_embeddings:
            raise ConfigError(
                f"num_position_embeddings ({self.num_position_embeddings}) must be a perfect square "
                "(a side x side grid)"
            )
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"deepstack_visual_indexes {bad} are outside the {self.depth} blocks")

    @property
    def pos_grid_side(self) -> int:
        return math.isqrt(self.num_position_embeddings)

    @classmethod
    def from_name(cls, name: str) -> Qwen3VisionConfig:
        return preset(QWEN3_VISION_PRESETS, name, "Qwen3 vision encoder")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Qwen3VisionConfig:
        """Read the `vision_config` section (or a whole Qwen3-Omni config.json / thinker_config containing it)."""
        section = _section(cfg, "vision_config")
        rope = section.get("rope_parameters") or section.get("rope_scaling") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ConfigError(f"vision rope_type {rope['rope_type']!r} is not supported (only axial)")
        return cls(**cls._from_hf(cfg))


AUT_PRESETS: dict[str, AuTEncoderConfig] = {
    # Qwen3-Omni-30B-A3B (Instruct / Thinking / Captioner): Thinker hidden 2048.
    "qwen3-omni-30b-a3b": AuTEncoderConfig(),
    # Tests: 2 layers of d 32; 200-frame windows (2 chunks, 26 tokens) so short clips span several windows.
    "tiny": AuTEncoderConfig(
        num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, n_window_infer=200, downsample_hidden_size=8,
        output_dim=48,
    ),
}

QWEN3_VISION_PRESETS: dict[str, Qwen3VisionConfig] = {
    "qwen3-omni-30b-a3b": Qwen3VisionConfig(),
    # Tests: 3 blocks, DeepStack after blocks 0 and 2, an 8x8 position table.
    "tiny": Qwen3VisionConfig(
        depth=3, hidden_size=32, intermediate_size=48, num_heads=2, num_position_embeddings=64,
        deepstack_visual_indexes=(0, 2), out_hidden_size=40,
    ),
}
