"""The engine interface: what the real-time runtime drives, whatever model is behind it.

An engine holds weights only and is shared by all sessions; `open_session` returns the per-session state
object (`EngineSession`) that owns caches, encoder buffers, RNG and history. The runtime calls a session's
methods from its device worker thread, never from the event loop, and never two at once for one session
(`respond` is an iterator that the worker advances step by step, so steps of many sessions interleave).

Timestamps are seconds on the session's media clock (the capture time of the input, 0 at session start).
Audio is float32 mono in [-1, 1]; input at `input_sample_rate`, output at `output_sample_rate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's reply text, as soon as it is decoded."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the assistant's speech; `text` is the reply text this audio speaks, when known."""

    pcm: np.ndarray  # float32 mono at the engine's output_sample_rate
    text: str = ""


@dataclass(frozen=True)
class TranscriptDelta:
    """Recognised user speech. `final` is set once, on the turn's complete transcript."""

    text: str
    final: bool = False


@dataclass(frozen=True)
class ReplyDone:
    """The reply ended on its own (not by interruption); `text` is the whole reply text."""

    text: str
    stats: dict[str, float] = field(default_factory=dict)


EngineEvent = TextDelta | AudioChunk | TranscriptDelta | ReplyDone


@runtime_checkable
class EngineSession(Protocol):
    """One conversation's state inside an engine."""

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
        """Feed user audio as it arrives (encode, recognise, prefill while the user speaks).

        Returns events produced right away, e.g. partial transcripts (`TranscriptDelta`)."""
        ...

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        """Feed one RGB uint8 frame [H, W, 3]; engines without vision ignore it."""
        ...

    def end_turn(self) -> list[EngineEvent]:
        """The user stopped speaking: finish the input side (flush partial blocks, final transcript)."""
        ...

    # Optional, not part of the protocol: `prepare_turn(self) -> list[EngineEvent]`. Called when the user
    # paused inside a turn (streaming.frames.SpeechPaused): do what end_turn would as far as possible
    # (finish recognition, prefill the turn) without a final transcript; more audio of the same turn may
    # follow (the engine then continues the turn), or end_turn comes. EmbeddedSession implements it.

    def respond(self) -> Iterator[EngineEvent]:
        """Generate the reply: text deltas and audio chunks, interleaved, ending with `ReplyDone`.

        Abandoning the iterator (closing it) is cancellation; follow it with `interrupt`."""
        ...

    def interrupt(self, played_text: str) -> None:
        """Barge-in: the reply was cut; keep in the history only `played_text` (what the user heard)."""
        ...

    def close(self) -> None:
        """Release the session's state."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Weights and shared resources; makes sessions."""

    name: str
    input_sample_rate: int
    output_sample_rate: int

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> EngineSession:
        """A new conversation; `instructions` replaces the engine's default system prompt."""
        ...
