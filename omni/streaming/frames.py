"""Typed, timestamped frames that flow between a session's stages.

Timestamps are seconds on the session's media clock (0 at session start, see `Session.clock`). Media frames
carry what was captured; control frames carry what the runtime decided, and jump ahead of media frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_FRAME_SAMPLES = 10 * 192000  # one audio frame at most (10 s at 192 kHz); a transport gives 10-60 ms


@dataclass(frozen=True)
class AudioFrame:
    """Captured user audio. `pcm` is int16 or float32, shaped [samples] or [channels, samples] (planar)
    or [1, samples * channels] (packed, as av gives it); the audio stage resamples it to the engine's rate."""

    pcm: np.ndarray
    sample_rate: int
    timestamp: float
    channels: int = 1


@dataclass(frozen=True)
class VideoFrame:
    """One captured camera frame; `image` is RGB uint8 [H, W, 3] or a transport object the video stage converts."""

    image: Any
    timestamp: float


@dataclass(frozen=True)
class UserMessage:
    """Text the user typed (a `conversation.item.create` of a user message with `input_text`): it joins the
    user's turn, and `response.create` answers it."""

    text: str
    item_id: str
    timestamp: float = 0.0
    images: tuple[str, ...] = ()  # `input_image` parts as data URLs, decoded by the session's media worker


@dataclass(frozen=True)
class SpeechStarted:
    """Voice activity began at `timestamp` (the onset, not the moment it was confirmed)."""

    timestamp: float


@dataclass(frozen=True)
class SpeechPaused:
    """The user has been silent for `pause_ms` inside a turn: the turn may be ending (`SpeechStopped` follows
    once the silence reaches `silence_ms`) or speech may resume. `timestamp`: end of the last voiced audio.
    Engines may finish recognising and prefill the turn now, off the reply's critical path."""

    timestamp: float


@dataclass(frozen=True)
class SpeechStopped:
    """The user's turn ended: `timestamp` is the end of the last voiced audio; `heard_until` the end of the audio
    the detector had heard when it ended the turn (`timestamp` + the silence it waited; 0: not known);
    `semantic`: ended before the full silence because the engine judged the words a finished message."""

    timestamp: float
    heard_until: float = 0.0
    semantic: bool = False


@dataclass(frozen=True)
class ResponseRequest:
    """Generate a reply now (client `response.create`, or a turn that ended)."""

    timestamp: float
    instructions: str | None = None
    speech: bool | None = None  # the response's output modalities: True audio, False text only, None the session's


@dataclass(frozen=True)
class InputCommit:
    """The client ends its input turn by hand (`input_audio_buffer.commit`, manual turns)."""

    timestamp: float = 0.0


@dataclass(frozen=True)
class InputClear:
    """The client drops the input audio not yet taken into a turn (`input_audio_buffer.clear`)."""

    timestamp: float = 0.0


@dataclass(frozen=True)
class Interrupt:
    """Stop the current reply: `reason` is "barge_in" or "client_cancel"."""

    timestamp: float
    reason: str = "barge_in"


@dataclass(frozen=True)
class Truncate:
    """The client reports it played only `audio_end_ms` of an assistant item (conversation.item.truncate)."""

    item_id: str
    audio_end_ms: int
    timestamp: float = 0.0


@dataclass(frozen=True)
class SessionUpdate:
    """Client settings (session.update): only the recognised keys, already validated."""

    settings: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
