"""The omni engine's conversations: what it drives (`OmniSession`), voices by name, and each family's session.

A speaking engine opens a `SpeakingSession` (Qwen2.5-Omni: voices from spk_dict.pt) or a `Qwen3VoiceSession`
(Qwen3-Omni: the checkpoint's speakers by lower-case name); a text-only one a `ThinkerSession` or a
`Qwen3ThinkerSession`. The engine does not tell them apart after `open_conversation`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Protocol

import torch

from omni.model.conversation import EncodedPiece, ReplyRecord, SlotPiece, ThinkerMark, TokenText
from omni.model.errors import ConfigError
from omni.model.lm.batch import PoolStep
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.omni import LoadedThinker
from omni.model.prompt import PromptBuilder
from omni.model.qwen3.loader import LoadedQwen3
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.qwen3.speech import DEFAULT_SPEAKER, Qwen3SpeechModels, Qwen3SpeechSettings
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.model.speech_session import SessionRows, SpeakingSession, SpeechSettings
from omni.model.thinker_session import ThinkerSession
from omni.model.token2wav.streaming import PCMChunk
from omni.model.voices import UnknownVoiceError
from omni.streaming.engines.omni_models import Loaded, Speech


class _Weights(Protocol):
    @property
    def lm(self) -> DecoderLM: ...

    @property
    def device(self) -> torch.device: ...


class OmniSession(Protocol):
    """What the engine drives in a conversation: a family's Thinker session (`ThinkerSession`, `SpeakingSession`,
    `Qwen3ThinkerSession`, `Qwen3VoiceSession`; omni/model/conversation.py and each family's session module
    document the calls)."""

    @property
    def thinker(self) -> _Weights: ...
    @property
    def prompt(self) -> PromptBuilder: ...
    @property
    def state(self) -> DecoderState: ...
    @property
    def logits(self) -> torch.Tensor | None: ...

    def feed_ids(self, ids: Sequence[int]) -> None: ...
    def start_user_turn(self) -> None: ...
    def add_text(self, text: str) -> None: ...
    def begin_audio(self) -> None: ...
    def push_audio(self, pcm16k: torch.Tensor) -> int: ...
    def end_audio(self) -> int: ...
    def add_image(self, patches: torch.Tensor, grid: Sequence[int]) -> None: ...
    def begin_video(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None: ...
    def push_video_frame(self, frame: torch.Tensor) -> int: ...
    def end_video(self) -> None: ...
    def begin_av(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None: ...
    def push_av_audio(self, pcm16k: torch.Tensor) -> None: ...
    def push_av_audio_features(self, mel: torch.Tensor) -> None: ...
    def push_av_frame(self, frame: torch.Tensor) -> None: ...
    def end_av(self) -> None: ...
    def take_encoded(self) -> list[EncodedPiece]: ...
    def end_user_turn(self, recalled: Sequence[SlotPiece] = ()) -> torch.Tensor: ...
    def respond(
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | PCMChunk | ReplyRecord, None, None]: ...
    def respond_steps(
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | PCMChunk | ReplyRecord | PoolStep, Any, None]: ...
    def mark(self) -> ThinkerMark: ...
    def rollback(self, mark: ThinkerMark) -> None: ...


def voice_name(speech: Speech | None, voice: str | None) -> str:
    """The checkpoint's name for `voice` (None: its default); ValueError listing the voices it has."""
    if speech is None:
        raise ValueError("voices are for a speaking engine (this one replies in text only)")
    if isinstance(speech, Qwen3SpeechModels):  # speakers by lower-case name
        known = speech.speakers
        name = voice or (DEFAULT_SPEAKER if DEFAULT_SPEAKER in known else known[0])
        try:
            speech.talker_config.speaker(name)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return name.lower()
    try:
        return speech.voices.get(voice).name
    except UnknownVoiceError as e:
        raise ValueError(str(e)) from None


def open_conversation(
    thinker: Loaded,
    speech: Speech | None,
    system: str,
    settings: SpeechSettings,
    cache: CacheConfig,
    talker_cache: CacheConfig | None,
    rows: SessionRows,
) -> OmniSession:
    """The family's session on `rows` (SessionRows(): caches of its own), its system turn prefilled: speaking in
    `settings.voice` (a name `voice_name` gave) when there is a `speech` half, else text only."""
    if speech is None:
        if isinstance(thinker, LoadedQwen3):
            return Qwen3ThinkerSession(thinker.model, thinker.prompt, system, cache, thinker.tokenizer,
                                       pool=rows.thinker, sid=rows.thinker_sid)
        return ThinkerSession(thinker.model, thinker.prompt, system, cache, thinker.tokenizer,
                              pool=rows.thinker, sid=rows.thinker_sid)
    if isinstance(speech, Qwen3SpeechModels):
        assert isinstance(thinker, LoadedQwen3) and settings.voice is not None
        q3 = Qwen3SpeechSettings(speaker=settings.voice, sampling=settings.talker_sampling, seed=settings.seed)
        return Qwen3VoiceSession(thinker.model, thinker.prompt, thinker.tokenizer, speech, q3, system, cache,
                                 talker_cache, rows)
    assert isinstance(thinker, LoadedThinker)
    return SpeakingSession(thinker.model, thinker.prompt, thinker.tokenizer, speech, settings, system, cache,
                           talker_cache, rows)
