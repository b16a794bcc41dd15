"""The Thinker: decoder LM + audio and vision encoders, merged by placeholder tokens, positioned by TMRoPE.

`Thinker` holds weights only (shared by sessions). `Thinker.prompt_logits` runs a whole prompt at once
(the reference computation: encode every medium, scatter the features into their placeholder positions,
TMRoPE ids for the whole sequence). `ThinkerSession` holds one conversation and prefills it piece by piece
while the user is still talking: each completed 2-s audio block (50 tokens) and each completed temporal
patch of video (2 frames = 1 s) goes into the KV cache at once, so little is left to do at the end of a
turn. Because every piece's positions depend only on what came before, the cache then holds exactly
what the one-shot prompt would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.audio_encoder import AudioEncoder, AudioEncoderState
from model.audio_frontend import LogMel, LogMelState, to_mono_16k
from model.config import ConfigError, DecoderConfig
from model.decoder import DecoderLM, DecoderState, default_cache_config
from model.encoder_config import AudioEncoderConfig, VisionEncoderConfig
from model.kv_cache import CacheConfig
from model.prompt import SPEECH_SYSTEM_PROMPT, PromptBuilder
from model.sampling import SamplerState, SamplingConfig, sample
from model.tmrope import (
    MultimodalTokenIds,
    PositionCursor,
    StreamingVideoPositions,
    TMRoPEConfig,
    flat_positions,
    patch_time_offsets,
    rope_index,
)
from model.vision_encoder import VisionEncoder, VisionEncoderState
from model.vision_preprocess import VisionInputError, VisionPreprocessConfig, preprocess_image

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
            int(th.get("position_id_per_seconds", 25)),
            float(th.get("seconds_per_chunk", 2)),
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
        """An RGB image ([H, W, 3] or [3, H, W], 0..255) -> (patches, grid). Rejects images smaller than one
        14-px patch per side: upscaling them would invent every pixel the encoder sees."""
        h, w = (image.shape[0], image.shape[1]) if image.shape[-1] == 3 else (image.shape[-2], image.shape[-1])
        p = self.cfg.vision.patch_size
        if h < p or w < p:
            raise VisionInputError(f"image of {h}x{w} px is smaller than one {p}x{p} patch; expected >= {p} px a side")
        return preprocess_image(image, self.cfg.vision, cfg)

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
        x = self.lm.embed_tokens(input_ids.to(self.device)).clone()
        t = self.cfg.tokens
        for name, token, feats in (("audio", t.audio, audio), ("image", t.image, images), ("video", t.video, videos)):
            where = (input_ids == token).nonzero().squeeze(1).to(self.device)
            n = sum(f.shape[0] for f in feats)
            if where.numel() != n:
                raise ValueError(f"{where.numel()} {name} placeholder tokens but {n} {name} features")
            if n:
                x[where] = torch.cat(list(feats)).to(x.dtype)
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
        audio = [self.encode_audio(m) for m in audio_mels]
        image_feats = [self.encode_vision(p, g) for p, g in images]
        video_feats = [self.encode_vision(v.patches, v.grid) for v in videos]
        positions = rope_index(
            input_ids,
            self.cfg.tokens,
            self.cfg.rope,
            audio_tokens=[a.shape[0] for a in audio],
            image_grids=[g for _, g in images],
            video_grids=[v.grid for v in videos],
            seconds_per_grid=[v.seconds_per_grid for v in videos],
            use_audio_in_video=use_audio_in_video,
        )
        x = self.merge_embeddings(input_ids, audio, image_feats, video_feats)
        state = self.lm.init_state(cache or _fitting_cache(self.cfg.text, input_ids.shape[0]))
        out = self.lm(state, inputs_embeds=x[None], positions=positions[:, None].to(self.device), logits="all")
        assert out.logits is not None
        return out.logits[0]


def _fitting_cache(cfg: DecoderConfig, n: int) -> CacheConfig:
    """A cache that holds n tokens in full attention (no window eviction), for offline prompts."""
    base = default_cache_config(cfg)
    return base if n <= base.window else CacheConfig(sinks=base.sinks, window=n, chunk=base.chunk)


@dataclass
class _AVStream:
    """One live video-with-audio segment: encoded pieces waiting for their turn in the 2-s interleave."""

    video: StreamingVideoPositions
    audio_start: int
    grid_hw: tuple[int, int]
    video_queue: list[tuple[int, torch.Tensor]]  # (chunk index, tokens of one temporal patch)
    audio_queue: list[torch.Tensor]  # tokens of audio chunk len(sent) + i
    audio_sent: int = 0  # audio tokens prefilled so far
    chunk: int = 0  # the chunk being laid out
    phase: str = "video"  # which half of `chunk` is being laid out
    cuts: int = 0  # chunk index of the last encoded video patch
    video_done: bool = False
    audio_done: bool = False


class ThinkerSession:
    """One conversation with the Thinker: bounded KV cache, TMRoPE cursor, encoder streaming states.

    Typical turn: `start_user_turn()`, then any of `add_text`, `begin_audio`/`push_audio`/`end_audio`,
    `add_image`, `begin_video`/`push_video_frame`/`end_video`, `begin_av`/`push_av_audio`/`push_av_frame`/
    `end_av`; then `end_user_turn()` and `generate(...)`. Every push prefills at once what it completes.
    Not thread-safe: drive it from one worker.
    """

    def __init__(
        self,
        thinker: Thinker,
        prompt: PromptBuilder,
        system_prompt: str | None = SPEECH_SYSTEM_PROMPT,
        cache: CacheConfig | None = None,
    ) -> None:
        self.thinker = thinker
        self.prompt = prompt
        self.state: DecoderState = thinker.lm.init_state(cache)
        self.cursor = PositionCursor(thinker.cfg.rope)
        self.logits: torch.Tensor | None = None  # [V] after the last prefilled token
        self._mel: LogMelState | None = None
        self._audio: AudioEncoderState | None = None
        self._video: tuple[VisionEncoderState, StreamingVideoPositions] | None = None
        self._av: _AVStream | None = None
        self.prefilled_tokens = 0
        if system_prompt is not None:
            self.feed_ids(prompt.system_turn(system_prompt))

    # ---- prefill primitives ------------------------------------------------------------------------------

    def feed_ids(self, ids: Sequence[int]) -> None:
        """Text or special tokens at the next text positions."""
        if ids:
            x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
            self._feed(x, self.cursor.text(len(ids)))

    def _feed(self, x: torch.Tensor, positions: torch.Tensor) -> None:  # x [T, C], positions [3, T]
        if x.shape[0] == 0:
            return
        out = self.thinker.lm(self.state, inputs_embeds=x[None], positions=positions[:, None].to(x.device))
        assert out.logits is not None
        self.logits = out.logits[0]
        self.prefilled_tokens += x.shape[0]

    def _shared_special(self, ids: Sequence[int]) -> None:  # the paired bos/eos of a video with audio
        x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
        self._feed(x, self.cursor.shared(len(ids)))

    # ---- turns -----------------------------------------------------------------------------------------------

    def start_user_turn(self) -> None:
        self.feed_ids(self.prompt.turn_start("user"))

    def add_text(self, text: str) -> None:
        self.feed_ids(self.prompt.text(text))

    def end_user_turn(self) -> torch.Tensor:
        """Close the user turn, open the assistant's; returns the logits [V] of the first reply token."""
        if self._audio is not None or self._video is not None or self._av is not None:
            raise RuntimeError("end the open audio/video segment before ending the turn")
        self.feed_ids(self.prompt.generation_prompt())
        assert self.logits is not None
        return self.logits

    def generate(self, sampling: SamplingConfig, stop_ids: frozenset[int]) -> Iterator[int]:
        """Yield reply token ids; each is prefilled at the next text position (TMRoPE decode: max + 1).
        After the reply (stop token, max_new_tokens or the caller closing the iterator) <|im_end|>\\n is fed."""
        if self.logits is None:
            raise RuntimeError("nothing prefilled: call end_user_turn() first")
        sampler = SamplerState.create(self.thinker.cfg.text.vocab_size, seed=sampling.seed, device=self.thinker.device)
        try:
            for _ in range(sampling.max_new_tokens):
                token = int(sample(self.logits[None], sampling, sampler)[0])
                if token in stop_ids:
                    break
                sampler.observe(torch.tensor([[token]], device=self.thinker.device))
                yield token
                self.feed_ids([token])
        finally:
            self.feed_ids(self.prompt.turn_end())

    # ---- audio ---------------------------------------------------------------------------------------------

    def begin_audio(self) -> None:
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.audio_start])
        self._mel = self.thinker.mel.init_state(self.thinker.device)
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)

    def push_audio(self, pcm16k: torch.Tensor) -> int:
        """16 kHz mono samples; prefills every 2-s block they complete. Returns audio tokens prefilled."""
        if self._mel is None:
            raise RuntimeError("push_audio() outside begin_audio()/end_audio()")
        return self.push_audio_features(self.thinker.mel.step(self._mel, pcm16k.to(self.thinker.device)))

    def push_audio_features(self, mel: torch.Tensor) -> int:
        """Log-mel frames [n_mels, t] (when the caller runs the front-end itself)."""
        if self._audio is None:
            raise RuntimeError("audio pushed outside begin_audio()/end_audio()")
        tokens = self.thinker.audio_tower.step(self._audio, mel.to(self.thinker.device)).to(self.thinker.lm.dtype)
        self._feed(tokens, self.cursor.audio(tokens.shape[0]))
        return tokens.shape[0]

    def end_audio(self) -> int:
        """Encode the partial last block, prefill it and <|audio_eos|>. Returns its token count."""
        if self._audio is None:
            raise RuntimeError("end_audio() without begin_audio()")
        n = 0
        if self._mel is not None and self._mel.n_seen:
            n += self.push_audio_features(self.thinker.mel.flush(self._mel))
        tokens = self.thinker.audio_tower.flush(self._audio).to(self.thinker.lm.dtype)
        self._feed(tokens, self.cursor.audio(tokens.shape[0]))
        self._mel = self._audio = None
        self.feed_ids([self.thinker.cfg.tokens.audio_end])
        return n + tokens.shape[0]

    # ---- images and video ------------------------------------------------------------------------------------

    def add_image(self, patches: torch.Tensor, grid: Sequence[int]) -> None:
        """A preprocessed image (see vision_preprocess.preprocess_image) with its bos/eos tokens."""
        self._check_idle()
        tokens = self.thinker.encode_vision(patches, grid)
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        self._feed(tokens, self.cursor.image(grid))
        self.feed_ids([t.vision_end])

    def begin_video(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video of normalised frames height x width (multiples of 28 px), 2 / seconds_per_grid fps."""
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.vision_start])
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._video = (enc, StreamingVideoPositions(self.cursor.next_id, seconds_per_grid))

    def push_video_frame(self, frame: torch.Tensor) -> int:
        """One normalised frame [3, H, W]; every second frame completes a temporal patch, prefilled at once."""
        if self._video is None:
            raise RuntimeError("push_video_frame() outside begin_video()/end_video()")
        enc, pos = self._video
        return self._feed_patch(enc, pos, self.thinker.visual.step(enc, frame.to(self.thinker.device)))

    def end_video(self) -> None:
        if self._video is None:
            raise RuntimeError("end_video() without begin_video()")
        enc, pos = self._video
        self._feed_patch(enc, pos, self.thinker.visual.flush(enc))
        if pos.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_video()")
        self._video = None
        self.feed_ids([self.thinker.cfg.tokens.vision_end])

    def _feed_patch(self, enc: VisionEncoderState, pos: StreamingVideoPositions, tokens: torch.Tensor) -> int:
        if tokens.shape[0] == 0:
            return 0
        self._feed(tokens.to(self.thinker.lm.dtype), pos.next_patch(self.cursor, (enc.layout.gh, enc.layout.gw)))
        return tokens.shape[0]

    # ---- video with its audio (2-s interleave) ---------------------------------------------------------------

    def begin_av(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video whose audio track is interleaved with it (use_audio_in_video)."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self._shared_special([t.vision_start, t.audio_start])
        start = self.cursor.next_id
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._video = (enc, StreamingVideoPositions(start, seconds_per_grid))
        self._mel = self.thinker.mel.init_state(self.thinker.device)
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)
        p = self.thinker.cfg.vision.patch_size
        self._av = _AVStream(self._video[1], start, (height // p, width // p), [], [])

    def push_av_frame(self, frame: torch.Tensor) -> None:
        av, (enc, _) = self._need_av()
        tokens = self.thinker.visual.step(enc, frame.to(self.thinker.device))
        self._queue_patch(av, tokens)
        self._pump(av)

    def push_av_audio(self, pcm16k: torch.Tensor) -> None:
        av, _ = self._need_av()
        assert self._mel is not None
        self._queue_audio(av, self.thinker.mel.step(self._mel, pcm16k.to(self.thinker.device)))
        self._pump(av)

    def push_av_audio_features(self, mel: torch.Tensor) -> None:
        av, _ = self._need_av()
        self._queue_audio(av, mel.to(self.thinker.device))
        self._pump(av)

    def end_av(self) -> None:
        av, (enc, _) = self._need_av()
        assert self._mel is not None and self._audio is not None
        self._queue_patch(av, self.thinker.visual.flush(enc))
        if self._mel.n_seen:
            self._queue_audio(av, self.thinker.mel.flush(self._mel))
        tail = self.thinker.audio_tower.flush(self._audio)
        if tail.shape[0]:
            av.audio_queue.append(tail.to(self.thinker.lm.dtype))
        if av.video.n_patches + len(av.video_queue) == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_av()")
        av.video_done = av.audio_done = True
        self._pump(av)
        self._video = self._av = None
        self._mel = self._audio = None
        t = self.thinker.cfg.tokens
        self._shared_special([t.audio_end, t.vision_end])

    def _need_av(self) -> tuple[_AVStream, tuple[VisionEncoderState, StreamingVideoPositions]]:
        if self._av is None or self._video is None:
            raise RuntimeError("video-with-audio input outside begin_av()/end_av()")
        return self._av, self._video

    def _queue_patch(self, av: _AVStream, tokens: torch.Tensor) -> None:
        if tokens.shape[0] == 0:
            return
        k = av.video.n_patches + len(av.video_queue)  # this patch's index
        offset = int(patch_time_offsets(k + 1, av.video.seconds_per_grid, self.cursor.cfg.position_id_per_seconds)[k])
        if k and offset >= (av.cuts + 1) * self.cursor.cfg.ids_per_chunk:
            av.cuts += 1
        av.video_queue.append((av.cuts, tokens.to(self.thinker.lm.dtype)))

    def _queue_audio(self, av: _AVStream, mel: torch.Tensor) -> None:
        assert self._audio is not None
        tokens = self.thinker.audio_tower.step(self._audio, mel)  # whole 2-s blocks = whole 50-id chunks
        per = self.cursor.cfg.ids_per_chunk
        for i in range(0, tokens.shape[0], per):
            av.audio_queue.append(tokens[i : i + per].to(self.thinker.lm.dtype))

    def _video_chunk_complete(self, av: _AVStream) -> bool:
        """No more video patches can fall into chunk `av.chunk`."""
        if av.video_done or av.video_queue:
            return av.video_done or av.video_queue[0][0] > av.chunk
        k = av.video.n_patches  # the next patch to arrive, predicted: its time offset is known in advance
        if k == 0:
            return False
        offset = int(patch_time_offsets(k + 1, av.video.seconds_per_grid, self.cursor.cfg.position_id_per_seconds)[k])
        return av.cuts + int(offset >= (av.cuts + 1) * self.cursor.cfg.ids_per_chunk) > av.chunk

    def _pump(self, av: _AVStream) -> None:
        """Prefill everything whose place in the interleave is settled: chunk by chunk, video then audio."""
        while True:
            if av.phase == "video":
                while av.video_queue and av.video_queue[0][0] == av.chunk:
                    _, tokens = av.video_queue.pop(0)
                    self._feed(tokens, av.video.next_patch(self.cursor, av.grid_hw))
                if not self._video_chunk_complete(av):
                    return
                av.phase = "audio"
            if av.audio_queue:
                tokens = av.audio_queue.pop(0)
                start = av.audio_start + av.audio_sent
                self._feed(tokens, self.cursor.place(flat_positions(start, tokens.shape[0])))
                av.audio_sent += tokens.shape[0]
            elif not av.audio_done:
                return
            if av.video_done and av.audio_done and not av.video_queue and not av.audio_queue:
                return
            av.chunk += 1
            av.phase = "video"

    def _check_idle(self) -> None:
        if self._audio is not None or self._video is not None:
            raise RuntimeError("an audio or video segment is still open")
