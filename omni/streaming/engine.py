"""The engine interface: what the real-time runtime drives, whatever model is behind it.

An engine holds weights only and is shared by all sessions; `open_session` returns the per-session state
object (`EngineSession`) that owns caches, encoder buffers, RNG and history. The runtime calls a session's
methods from its device worker thread, never from the event loop, and never two at once for one session
(`respond` is an iterator that the worker advances step by step, so steps of many sessions interleave).

Timestamps are seconds on the session's media clock (the capture time of the input, 0 at session start).
Audio is float32 mono in [-1, 1]; input at `input_sample_rate`, output at `output_sample_rate`.

A user turn is spoken (`push_audio` ... `end_turn`), typed (`push_text`), shown (`push_media`: an image or a
video clip), or a mix, in the order they came; `respond` answers it. `EngineSessionBase` holds what every
engine session does the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

# The rates engines hear and speak at: the audio encoders' 16 kHz and the speech decoders' 24 kHz.
INPUT_SAMPLE_RATE = 16000
OUTPUT_SAMPLE_RATE = 24000


@dataclass(frozen=True)
class Image:
    """A still image the user shows with a typed turn: RGB uint8 [H, W, 3]."""

    rgb: np.ndarray


@dataclass(frozen=True)
class VideoClip:
    """A recorded video the user shows with a typed turn: its decoded RGB uint8 frames [H, W, 3] at `fps` (the
    engine samples what it needs) and, when it is to be heard too, its soundtrack (float32 mono at the engine's
    input rate), interleaved with the frames."""

    frames: list[np.ndarray]
    fps: float
    audio: np.ndarray | None = None


Attachment = Image | VideoClip


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's reply text, as soon as it is decoded."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the assistant's speech; `text` is the reply text this audio speaks, when known."""

    pcm: np.ndarray  # float32 mono at the engine's output_sample_rate (int16 at 48 kHz on the output queue)
    text: str = ""


@dataclass(frozen=True)
class TranscriptDelta:
    """Recognised user speech. Not `final`: text appended to what the turn's earlier deltas said (a Realtime
    `input_audio_transcription.delta`; an engine whose hypotheses get revised sends only their stable part,
    `omni.streaming.transcript.TranscriptDeltas`). `final` is set once, on the turn's complete transcript, which
    replaces the deltas."""

    text: str
    final: bool = False


@dataclass(frozen=True)
class ReplyDone:
    """The reply ended on its own (not by interruption); `text` is the whole reply text."""

    text: str
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnEndLikely:
    """From `prepare_turn`: how likely the engine's LM thinks the user's message is finished at this pause (a
    probability), for a semantic end of turn (omni.streaming.vad.TurnDetector.end_likely). Engines that cannot
    tell send none, and their turns end after the full silence."""

    probability: float


@dataclass(frozen=True)
class Working:
    """Nothing to say yet: the reply ended this step between two bounded pieces of its work (chunks of a long
    prompt), so that the device worker runs other sessions' jobs before its next step. Consumers skip it."""


EngineEvent = TextDelta | AudioChunk | TranscriptDelta | ReplyDone | TurnEndLikely | Working


@dataclass(frozen=True)
class ResponseOptions:
    """How one reply is to be given (a Realtime `response.create`'s options): `speech` False asks for text only
    (no `AudioChunk`s, and no synthesis spent on them); `instructions` are extra guidance for this reply only,
    on top of the session's (engines that cannot condition one reply on them say so in their docstring)."""

    speech: bool = True
    instructions: str | None = None


SPOKEN_REPLY = ResponseOptions()


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

    def push_text(self, text: str) -> list[EngineEvent]:
        """A user message typed instead of spoken: it joins the open user turn after whatever was pushed
        before (prefilled at once where the engine can); `respond` answers the turn."""
        ...

    def push_media(self, media: Attachment) -> list[EngineEvent]:
        """An image or a video clip joining the open user turn (shown with a typed turn); engines without
        vision ignore it (`EngineSessionBase`'s default)."""
        ...

    def prepare_turn(self) -> list[EngineEvent]:
        """The user paused inside a turn (omni.streaming.frames.SpeechPaused): do what end_turn would as far as
        possible (finish recognition, prefill the turn) without a final transcript. More audio of the same
        turn may follow (the engine then continues the turn), or end_turn comes. An engine that can judge
        whether the words so far finish the turn says so with a `TurnEndLikely`. `EngineSessionBase`'s
        default does nothing."""
        ...

    def end_turn(self) -> list[EngineEvent]:
        """The user stopped speaking: finish the input side (flush partial blocks, final transcript)."""
        ...

    def discard_audio(self) -> None:
        """The client cleared its input audio buffer (Realtime `input_audio_buffer.clear`): forget the audio of
        the open user turn, as if it had never been pushed (what was prefilled or recognised of it is taken back).
        Only the audio since the turn's last typed message or media is forgotten: those close what came before
        them. Nothing to do when no audio is open."""
        ...

    def set_instructions(self, instructions: str | None) -> None:
        """The session's instructions change in the middle of the conversation (None: the engine's default
        prompt); they guide every reply from the next one on. The prompt the conversation opened with stays where
        it is (rewriting it would prefill the whole conversation again): the new instructions go in before the
        next reply's prompt as that reply's own instructions do (`ResponseOptions.instructions`), and stay in
        the history. `EngineSessionBase` does this for every engine."""
        ...

    def respond(self, options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
        """Generate the reply: text deltas and audio chunks (none when `options.speech` is False), interleaved,
        ending with `ReplyDone`.

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
    """Weights and shared resources; makes sessions. An engine whose sessions send `TurnEndLikely` from
    `prepare_turn` says so with a class attribute `judges_turn_end = True` (session.created then shows the
    semantic end of turn as the Realtime `semantic_vad`); without it turns end after the silence. An engine that
    captured CUDA graphs at start-up lists them as `graph_captures` (omni/model/lm/cuda_graph.py `GraphCapture`s; the
    server's /metrics shows them)."""

    name: str
    input_sample_rate: int
    output_sample_rate: int

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> EngineSession:
        """A new conversation; `instructions` replaces the engine's default system prompt."""
        ...


class EngineSessionBase:
    """What every engine session does the same way: refuse calls once closed, no-op `prepare_turn` and
    `push_media` for engines that have nothing to do there, and instructions changed mid-conversation
    (`set_instructions`: an engine's `respond` folds them into its options with `_take_instructions`)."""

    default_instructions: str | None = None  # what set_instructions(None) means: the engine's default prompt

    def __init__(self) -> None:
        self.closed = False
        self._new_instructions: str | None = None  # set_instructions' text until the next reply takes it

    def set_instructions(self, instructions: str | None) -> None:
        """The next reply takes them (`_take_instructions`). An engine without a default prompt that is asked
        for it (None) adds nothing: the last instructions stay in its history."""
        self._check_open()
        text = instructions.strip() if instructions and instructions.strip() else self.default_instructions
        self._new_instructions = text or None

    def _take_instructions(self, options: ResponseOptions) -> ResponseOptions:
        """`options` with the instructions set since the last reply first, then the reply's own (once)."""
        new, self._new_instructions = self._new_instructions, None
        if new is None:
            return options
        own = (options.instructions or "").strip()
        return ResponseOptions(options.speech, f"{new}\n{own}" if own else new)

    def push_media(self, media: Attachment) -> list[EngineEvent]:
        """No vision: the attachment is not seen."""
        self._check_open()
        return []

    def prepare_turn(self) -> list[EngineEvent]:
        """Nothing to prepare: the turn's input is finished by `end_turn`."""
        self._check_open()
        return []

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("engine session is closed")


M = TypeVar("M")


@dataclass
class LiveReply(Generic[M]):
    """An engine session's live (or last) reply: where it starts (`mark`: what to roll the session back to
    when an interruption keeps less of it), its text so far, and whether it is still being generated."""

    mark: M
    text: str = ""
    open: bool = True  # generating (not finished, not interrupted)


History = deque[tuple[str, str]]  # (role, text): "user", "assistant" or "system" (per-reply instructions)


def replace_last_reply(history: History, text: str) -> int:
    """Replace the last reply's text in `history`; its index, or -1 where it left the bounded history."""
    for i in range(len(history) - 1, -1, -1):
        if history[i][0] == "assistant":
            history[i] = ("assistant", text)
            return i
    return -1


def check_rgb_frame(frame: object) -> None:
    """`push_video`'s contract: an RGB uint8 frame [H, W, 3]; anything else is a ValueError naming what came."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"push_video expects an RGB uint8 frame [H, W, 3], got {what}")


def close_iterator(it: Iterator[object] | None) -> None:
    """Stop a reply now, not at garbage collection: a generator runs its cleanup (the engine's session then
    holds what was generated so far); an iterator without `close` holds nothing to clean up."""
    close = getattr(it, "close", None)
    if close is not None:
        close()
