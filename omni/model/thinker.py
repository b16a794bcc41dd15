"""The Thinker: decoder LM + audio and vision encoders, merged by placeholder tokens, positioned by TMRoPE.

`Thinker` holds weights only (shared by sessions). `Thinker.prompt_logits` runs a whole prompt at once
(the reference computation: encode every medium, scatter the features into their placeholder positions,
TMRoPE ids for the whole sequence). `ThinkerSession` (omni/model/thinker_session.py) holds one conversation and
prefills it piece by piece while the user is still talking, so that the cache then holds exactly what the
one-shot prompt would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from omni.model.encoders.audio_encoder import AudioEncoder
from omni.model.encoders.audio_frontend import LogMel, to_mono_16k
from omni.model.encoders.config import AudioEncoderConfig, VisionEncoderConfig
from omni.model.encoders.vision_encoder import VisionEncoder
from omni.model.encoders.vision_preprocess import VisionPreprocessConfig, checked_image_input
from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM, default_cache_config
from omni.model.lm.kv_cache import CacheConfig
from omni.model.tmrope import (
    MultimodalTokenIds,
    TMRoPEConfig,
    rope_index,
)

RELEASED_TOKEN_IDS = MultimodalTokenIds(
    audio=151646,
    image=151655,
    video=151656,
    audio_start=151647,
    audio_end=151648,
    vision_start=151652,
    vision_end=151653,
)


@dataclass
class ThinkerConfig:
    """The `thinker_config` section of a Qwen2.5-Omni config.json."""

    text: DecoderConfig
    audio: AudioEncoderConfig
    vision: VisionEncoderConfig
    tokens: MultimodalTokenIds = RELEASED_TOKEN_IDS
    position_id_per_seconds: int = 25
    seconds_per_chunk: float = 2.0

    def __post_init__(self) -> None:
        c = self.text.hidden_size
        if self.audio.output_dim != c or self.vision.out_hidden_size != c:
            raise ConfigError(
                f"encoder output widths (audio {self.audio.output_dim}, vision {self.vision.out_hidden_size}) "
                f"must equal the text hidden size {c}"
            )
        if self.text.mrope_section is None:
            raise ConfigError("the Thinker's text config needs mrope_section (three-axis TMRoPE)")

    @property
    def rope(self) -> TMRoPEConfig:
        return TMRoPEConfig(self.position_id_per_seconds, self.seconds_per_chunk, self.vision.spatial_merge_size)

    @classmethod
    def from_name(cls, name: str) -> ThinkerConfig:
        """Real shapes for random-weight benchmarks ("qwen2.5-omni-7b", "qwen2.5-omni-3b"), or "tiny"."""
        if name == "tiny":
            return _tiny_thinker()
        if name not in ("qwen2.5-omni-7b", "qwen2.5-omni-3b"):
            raise ConfigError(f"unknown Thinker preset {name!r}; known: qwen2.5-omni-3b, qwen2.5-omni-7b, tiny")
        return cls(
            DecoderConfig.from_name(name), AudioEncoderConfig.from_name(name), VisionEncoderConfig.from_name(name)
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ThinkerConfig:
        """Read a whole Qwen2.5-Omni config.json or its thinker_config section."""
        th = cfg.get("thinker_config", cfg)
        if "text_config" not in th:
            raise ConfigError("no thinker_config.text_config: not a Qwen2.5-Omni config.json")
        # The Thinker LM is a Qwen2 decoder (q/k/v bias) under a model_type of its own.
        text_section = {**th["text_config"], "model_type": "qwen2", "architectures": None}
        # The head is tied or not per the Thinker's own flag (the saved text_config may say otherwise).
        if "tie_word_embeddings" in th:
            text_section["tie_word_embeddings"] = th["tie_word_embeddings"]
        text = DecoderConfig.from_hf_config(text_section)
        try:
            tokens = MultimodalTokenIds(
                audio=int(th["audio_token_index"]),
                image=int(th["image_token_index"]),
                video=int(th["video_token_index"]),
                audio_start=int(th["audio_start_token_id"]),
                audio_end=int(th["audio_end_token_id"]),
                vision_start=int(th["vision_start_token_id"]),
                vision_end=int(th["vision_end_token_id"]),
            )
        except KeyError as e:
            raise ConfigError(f"thinker_config is missing the field {e.args[0]!r}") from None
        return cls(
            text,
            AudioEncoderConfig.from_hf_config(th),
            VisionEncoderConfig.from_hf_config(th),
            tokens,
            **hf_fields(cls, th, {"position_id_per_seconds": "position_id_per_seconds",
                                  "seconds_per_chunk": "seconds_per_chunk"}, "thinker_config"),
        )

    def to_hf_config(self) -> dict[str, Any]:
        text = self.text.to_hf_config()
        text.update(model_type="qwen2_5_omni_text", architectures=None)
        t = self.tokens
        return {
            "thinker_config": {
                "model_type": "qwen2_5_omni_thinker",
                "text_config": text,
                "audio_config": self.audio.to_hf_config(),
                "vision_config": self.vision.to_hf_config(),
                "audio_token_index": t.audio,
                "image_token_index": t.image,
                "video_token_index": t.video,
                "audio_start_token_id": t.audio_start,
                "audio_end_token_id": t.audio_end,
                "vision_start_token_id": t.vision_start,
                "vision_end_token_id": t.vision_end,
                "position_id_per_seconds": self.position_id_per_seconds,
                "seconds_per_chunk": _json_number(self.seconds_per_chunk),
            },
            "model_type": "qwen2_5_omni",
            "architectures": ["Qwen2_5OmniForConditionalGeneration"],
        }


def _json_number(x: float) -> int | float:
    """2.0 -> 2: the released config.json writes integral values as integers (and transformers checks types)."""
    return int(x) if float(x).is_integer() else x


def _tiny_thinker() -> ThinkerConfig:
    """The shapes of the tests' tiny checkpoint (tests/model/omni_tiny.py): 2 text layers of width 64,
    head_dim 16 with TMRoPE sections 4/2/2, tiny encoders projecting to 64, a 288-token vocabulary."""
    text = DecoderConfig(
        vocab_size=288,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=1e6,
        max_position_embeddings=2048,
        qkv_bias=True,
        mrope_section=(4, 2, 2),
        architecture="qwen2",
    )
    audio = dataclasses.replace(AudioEncoderConfig.from_name("tiny"), output_dim=64)
    vision = dataclasses.replace(VisionEncoderConfig.from_name("tiny"), out_hidden_size=64)
    tokens = MultimodalTokenIds(
        audio=259, image=264, video=265, audio_start=260, audio_end=261, vision_start=262, vision_end=263
    )
    return ThinkerConfig(text, audio, vision, tokens)


@dataclass
class VideoInput:
    """A preprocessed video: flattened patches [t*h*w, patch_dim], grid (t, h, w), seconds per temporal patch."""

    patches: torch.Tensor
    grid: tuple[int, int, int]
    seconds_per_grid: float = 1.0


class Thinker(nn.Module):
    """Weights of the Thinker; per-conversation data lives in `ThinkerSession`."""

    def __init__(self, cfg: ThinkerConfig, lm: DecoderLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = lm if lm is not None else DecoderLM(cfg.text)
        self.audio_tower = AudioEncoder(cfg.audio)
        self.visual = VisionEncoder(cfg.vision)
        self.mel = LogMel(cfg.audio.num_mel_bins)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def audio_features(self, samples: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Any PCM ([N] or [channels, N], any rate) -> log-mel [n_mels, frames] at 16 kHz mono."""
        return self.mel(to_mono_16k(samples, sample_rate).to(self.device))

    def image_input(
        self, image: torch.Tensor, cfg: VisionPreprocessConfig | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """An RGB image ([H, W, 3] or [3, H, W], 0..255) -> (patches, grid); refuses one smaller than a patch."""
        return checked_image_input(image, self.cfg.vision, cfg)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [n_mels, frames] -> [tokens, C] (2-s blocks, 25 tokens/s)."""
        return self.audio_tower(mel.to(self.device)).to(self.lm.dtype)

    def encode_vision(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        t, h, w = (int(g) for g in grid)
        return self.visual.encode(patches.to(self.device), (t, h, w)).to(self.lm.dtype)

    def merge_embeddings(
        self,
        input_ids: torch.Tensor,
        audio: Sequence[torch.Tensor] = (),
        images: Sequence[torch.Tensor] = (),
        videos: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Token embeddings [L, C] of ids [L] with each medium's features written over its placeholders, in order."""
        ids = input_ids.to(self.device)
        x = self.lm.embed_tokens(ids).clone()
        write_media(x, ids, self.cfg.tokens, audio, images, videos)
        return x

    @torch.inference_mode()
    def prompt_logits(
        self,
        input_ids: torch.Tensor,
        audio_mels: Sequence[torch.Tensor] = (),
        images: Sequence[tuple[torch.Tensor, Sequence[int]]] = (),
        videos: Sequence[VideoInput] = (),
        use_audio_in_video: bool = False,
        cache: CacheConfig | None = None,
    ) -> torch.Tensor:
        """Offline: logits [L, V] of a whole prompt (placeholders expanded), in a fresh state.

        With use_audio_in_video each video's audio is the next entry of `audio_mels`, in prompt order.
        """
        media = encode_media(self.encode_audio, self.encode_vision, audio_mels, images, videos)
        return self.features_logits(input_ids, *media, use_audio_in_video, cache)

    @torch.inference_mode()
    def features_logits(
        self,
        input_ids: torch.Tensor,
        audio: Sequence[torch.Tensor] = (),
        images: Sequence[tuple[torch.Tensor, Sequence[int]]] = (),
        videos: Sequence[tuple[torch.Tensor, Sequence[int], float]] = (),
        use_audio_in_video: bool = False,
        cache: CacheConfig | None = None,
    ) -> torch.Tensor:
        """`prompt_logits` with the media already encoded: audio features [n, C] per audio, (features, grid) per
        image and (features, grid, seconds per temporal patch) per video, each in prompt order (recalled
        features of a memory slot are given this way)."""
        cfg = self.cfg
        positions = media_positions(input_ids, cfg.tokens, cfg.rope, audio, images, videos, use_audio_in_video)
        x = self.merge_embeddings(input_ids, audio, [f for f, _ in images], [f for f, _, _ in videos])
        state = self.lm.init_state(cache or fitting_cache(self.cfg.text, input_ids.shape[0]))
        out = self.lm(state, inputs_embeds=x[None], positions=positions[:, None].to(self.device), logits="all")
        assert out.logits is not None
        return out.logits[0]


V = TypeVar("V")  # one image's or video's encoder output: features [n, C], or Qwen3's with DeepStack


def encode_media(
    encode_audio: Callable[[torch.Tensor], torch.Tensor],
    encode_vision: Callable[[torch.Tensor, Sequence[int]], V],
    audio_mels: Sequence[torch.Tensor] = (),
    images: Sequence[tuple[torch.Tensor, Sequence[int]]] = (),
    videos: Sequence[VideoInput] = (),
) -> tuple[list[torch.Tensor], list[tuple[V, Sequence[int]]], list[tuple[V, Sequence[int], float]]]:
    """A prompt's media encoded, each in prompt order, in the form the `features_*` methods take: features per
    audio, (output, grid) per image, (output, grid, seconds per temporal patch) per video."""
    return (
        [encode_audio(m) for m in audio_mels],
        [(encode_vision(p, g), g) for p, g in images],
        [(encode_vision(v.patches, v.grid), v.grid, v.seconds_per_grid) for v in videos],
    )


def media_positions(
    input_ids: torch.Tensor,
    tokens: MultimodalTokenIds,
    rope: TMRoPEConfig,
    audio: Sequence[torch.Tensor],
    images: Sequence[tuple[Any, Sequence[int]]],
    videos: Sequence[tuple[Any, Sequence[int], float]],
    use_audio_in_video: bool,
) -> torch.Tensor:
    """[3, L] TM-RoPE ids of a prompt whose media are already encoded (as `encode_media` gives them)."""
    return rope_index(
        input_ids,
        tokens,
        rope,
        audio_tokens=[a.shape[0] for a in audio],
        image_grids=[g for _, g in images],
        video_grids=[g for _, g, _ in videos],
        seconds_per_grid=[spg for _, _, spg in videos],
        use_audio_in_video=use_audio_in_video,
    )


def write_media(
    x: torch.Tensor,
    ids: torch.Tensor,
    tokens: MultimodalTokenIds,
    audio: Sequence[torch.Tensor] = (),
    images: Sequence[torch.Tensor] = (),
    videos: Sequence[torch.Tensor] = (),
) -> dict[str, torch.Tensor]:
    """Write each medium's features [n, C] over its placeholder tokens of `ids` [L] in `x` [L, C] (in place, in
    order); returns each medium's placeholder mask. Both Thinker families place their media this way."""
    masks = {}
    for name, token, feats in (("audio", tokens.audio, audio), ("image", tokens.image, images),
                               ("video", tokens.video, videos)):
        mask = ids == token
        n = sum(f.shape[0] for f in feats)
        if int(mask.sum()) != n:
            raise ValueError(f"{int(mask.sum())} {name} placeholder tokens but {n} {name} features")
        if n:
            x[mask] = torch.cat(list(feats)).to(x.dtype)
        masks[name] = mask
    return masks


def fitting_cache(cfg: DecoderConfig, n: int) -> CacheConfig:
    """A cache that holds n tokens in full attention (no window eviction), for offline prompts."""
    base = default_cache_config(cfg)
    return base if n <= base.window else CacheConfig(sinks=base.sinks, window=n, chunk=base.chunk)
