"""The Qwen3-Omni Thinker: MoE decoder + AuT audio encoder + Qwen3-VL vision encoder with DeepStack.

Facts (shared/reference/qwen_omni.md section 2; transformers' Qwen3OmniMoeThinkerForConditionalGeneration):
* audio, image and video features are written over their placeholder tokens in prompt order, as for
  Qwen2.5-Omni (`Thinker.merge_embeddings`), with TM-RoPE ids under the Qwen3 rules (omni/model/tmrope.py);
* DeepStack: the vision encoder's k extra features per visual token (one per `deepstack_visual_indexes`
  entry) are added to the hidden states after decoder layers 0 .. k-1 at the visual (image and video)
  token positions, in prompt order; audio tokens of a video-with-audio get none;
* the Talker reads the hidden states entering layer `accept_hidden_layer` and the input embeddings
  (`ThinkerOutput.layer_hidden`, `ThinkerOutput.embeds`).

`Qwen3Thinker` holds weights only; `Qwen3ThinkerSession` (omni/model/qwen3/session.py) holds a conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from omni.model.encoders.audio_frontend import LogMel, to_mono_16k
from omni.model.encoders.aut_encoder import AuTEncoder
from omni.model.encoders.config import AuTEncoderConfig, Qwen3VisionConfig
from omni.model.encoders.qwen3_vision import Qwen3VisionEncoder, Qwen3VisionOutput
from omni.model.encoders.vision_preprocess import VisionPreprocessConfig, checked_image_input
from omni.model.errors import ConfigError
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM, LayerAdds
from omni.model.lm.kv_cache import CacheConfig
from omni.model.qwen3.config import Qwen3ThinkerConfig
from omni.model.thinker import VideoInput, encode_media, fitting_cache, media_positions, write_media
from omni.model.tmrope import rope_index


def text_config(cfg: Qwen3ThinkerConfig) -> DecoderConfig:
    """The decoder config of a thinker_config (the head is tied or not per the Thinker's own flag)."""
    section: dict[str, Any] = {"model_type": "qwen3_omni_moe_text", **cfg.text_config}
    section["tie_word_embeddings"] = cfg.tie_word_embeddings
    return DecoderConfig.from_hf_config(section)


@dataclass
class ThinkerOutput:
    """A whole prompt's forward: logits [L, V], the input embeddings [L, C] (media merged) and, when asked
    for, the hidden states entering a layer [L, C] (see `DecoderLM.forward`'s hidden_layer)."""

    logits: torch.Tensor
    embeds: torch.Tensor
    layer_hidden: torch.Tensor | None = None


class Qwen3Thinker(nn.Module):
    """Weights of the Qwen3-Omni Thinker; per-conversation data lives in a session."""

    def __init__(self, cfg: Qwen3ThinkerConfig, lm: DecoderLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        text = text_config(cfg)
        self.audio_cfg = AuTEncoderConfig.from_hf_config({"audio_config": cfg.audio_config})
        self.vision_cfg = Qwen3VisionConfig.from_hf_config({"vision_config": cfg.vision_config})
        c = text.hidden_size
        if self.audio_cfg.output_dim != c or self.vision_cfg.out_hidden_size != c:
            raise ConfigError(
                f"encoder output widths (audio {self.audio_cfg.output_dim}, vision {self.vision_cfg.out_hidden_size})"
                f" must equal the text hidden size {c}"
            )
        if len(self.vision_cfg.deepstack_visual_indexes) > text.num_layers:
            raise ConfigError("more DeepStack features than decoder layers")
        self.lm = lm if lm is not None else DecoderLM(text)
        self.audio_tower = AuTEncoder(self.audio_cfg)
        self.visual = Qwen3VisionEncoder(self.vision_cfg)
        self.mel = LogMel(self.audio_cfg.num_mel_bins)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    # ---- media -----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def audio_features(self, samples: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Any PCM ([N] or [channels, N], any rate) -> log-mel [n_mels, N // 160] at 16 kHz mono, as the
        Qwen3-Omni processor computes it for one clip."""
        return self.mel.unpadded(to_mono_16k(samples, sample_rate).to(self.device))

    def image_input(
        self, image: torch.Tensor, cfg: VisionPreprocessConfig | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """An RGB image ([H, W, 3] or [3, H, W], 0..255) -> (patches, grid) with Qwen3 preprocessing; refuses one
        smaller than a patch."""
        return checked_image_input(image, self.vision_cfg, cfg or VisionPreprocessConfig.qwen3())

    @torch.inference_mode()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [n_mels, frames] -> [tokens, C] (13 tokens per second)."""
        return self.audio_tower(mel.to(self.device)).to(self.lm.dtype)

    @torch.inference_mode()
    def encode_vision(self, patches: torch.Tensor, grid: Sequence[int]) -> Qwen3VisionOutput:
        t, h, w = (int(g) for g in grid)
        out = self.visual.encode(patches.to(self.device, self.visual.patch_embed.proj.weight.dtype), (t, h, w))
        return Qwen3VisionOutput(out.tokens.to(self.lm.dtype), [d.to(self.lm.dtype) for d in out.deepstack])

    # ---- whole prompts ---------------------------------------------------------------------------------------

    def merge(
        self,
        input_ids: torch.Tensor,
        audio: Sequence[torch.Tensor] = (),
        images: Sequence[Qwen3VisionOutput] = (),
        videos: Sequence[Qwen3VisionOutput] = (),
    ) -> tuple[torch.Tensor, LayerAdds | None]:
        """Embeddings [L, C] of ids [L] with each medium's features over its placeholders (in order), and the
        DeepStack residuals at the visual tokens (None without images or videos)."""
        ids = input_ids.to(self.device)
        x = self.lm.embed_tokens(ids).clone()
        masks = write_media(x, ids, self.cfg.tokens, audio, [o.tokens for o in images], [o.tokens for o in videos])
        visual = masks["image"] | masks["video"]
        if not images and not videos:
            return x, None
        k = len(self.vision_cfg.deepstack_visual_indexes)
        adds = []
        for i in range(k):
            joint = x.new_zeros(int(visual.sum()), x.shape[1])
            for kind, outs in (("image", images), ("video", videos)):
                if outs:
                    joint[masks[kind][visual]] = torch.cat([o.deepstack[i] for o in outs]).to(x.dtype)
            adds.append(joint)
        return x, LayerAdds(visual, adds)

    def positions(
        self,
        input_ids: torch.Tensor,
        audio_tokens: Sequence[int] = (),
        image_grids: Sequence[Sequence[int]] = (),
        video_grids: Sequence[Sequence[int]] = (),
        seconds_per_grid: Sequence[float] = (),
        use_audio_in_video: bool = False,
    ) -> torch.Tensor:
        """[3, L] TM-RoPE ids of a whole prompt (Qwen3 rules)."""
        return rope_index(input_ids, self.cfg.tokens, self.cfg.rope, audio_tokens, image_grids, video_grids,
                          seconds_per_grid, use_audio_in_video)

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
        """Offline: logits [L, V] of a whole prompt (placeholders expanded), in a fresh state. With
        use_audio_in_video each video's audio is the next entry of `audio_mels`, in prompt order."""
        return self.prompt_forward(input_ids, audio_mels, images, videos, use_audio_in_video, cache).logits

    @torch.inference_mode()
    def prompt_forward(
        self,
        input_ids: torch.Tensor,
        audio_mels: Sequence[torch.Tensor] = (),
        images: Sequence[tuple[torch.Tensor, Sequence[int]]] = (),
        videos: Sequence[VideoInput] = (),
        use_audio_in_video: bool = False,
        cache: CacheConfig | None = None,
        hidden_layer: int | None = None,
    ) -> ThinkerOutput:
        """`prompt_logits` with the input embeddings and (hidden_layer k) the hidden states entering layer k."""
        media = encode_media(self.encode_audio, self.encode_vision, audio_mels, images, videos)
        return self.features_forward(input_ids, *media, use_audio_in_video, cache, hidden_layer)

    @torch.inference_mode()
    def features_forward(
        self,
        input_ids: torch.Tensor,
        audio: Sequence[torch.Tensor] = (),
        images: Sequence[tuple[Qwen3VisionOutput, Sequence[int]]] = (),
        videos: Sequence[tuple[Qwen3VisionOutput, Sequence[int], float]] = (),
        use_audio_in_video: bool = False,
        cache: CacheConfig | None = None,
        hidden_layer: int | None = None,
    ) -> ThinkerOutput:
        """`prompt_forward` with the media already encoded (features [n, C] per audio, vision outputs with their
        grids, and seconds per temporal patch per video), each in prompt order."""
        cfg = self.cfg
        positions = media_positions(input_ids, cfg.tokens, cfg.rope, audio, images, videos, use_audio_in_video)
        x, adds = self.merge(input_ids, audio, [o for o, _ in images], [o for o, _, _ in videos])
        state = self.lm.init_state(cache or fitting_cache(self.lm.cfg, input_ids.shape[0]))
        out = self.lm(state, inputs_embeds=x[None], positions=positions[:, None].to(self.device), logits="all",
                      layer_adds=adds, hidden_layer=hidden_layer)
        assert out.logits is not None
        layer = None if out.layer_hidden is None else out.layer_hidden[0]
        return ThinkerOutput(out.logits[0], x, layer)
