"""The tone engine (`omni serve --engine test`): the engine interface without a model.

`ToneEngine` "recognises" how long the user spoke (or what they typed) and replies with a fixed sentence, one
word per step, each word as a `TextDelta` followed by an `AudioChunk` of a sine tone as long as the word takes
to say. `step_delay` makes each step slow, so a reply lasts long enough to be interrupted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from omni.streaming.engine import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    SPOKEN_REPLY,
    Attachment,
    AudioChunk,
    EngineEvent,
    EngineSessionBase,
    History,
    Image,
    ReplyDone,
    ResponseOptions,
    TextDelta,
    TranscriptDelta,
    check_rgb_frame,
)

DEFAULT_REPLY = "Hello, I heard you speak for {seconds:.1f} seconds, and this is my answer to you."
TEXT_REPLY = "You wrote: {text}"


class ToneSession(EngineSessionBase):
    """One conversation with `ToneEngine`. `history` holds (role, text) pairs as the engine remembers them."""

    def __init__(self, engine: ToneEngine, instructions: str | None = None, voice: str | None = None) -> None:
        super().__init__()
        self.history: History = deque()
        self.engine = engine
        self.instructions = instructions
        self.voice = voice  # not used to speak (the tones are the same): tests read what reached the engine
        self.heard_samples = 0
        self.turn_start = 0  # heard_samples when the open turn's audio started (its last end_turn or text)
        self.discarded_samples = 0  # audio taken back by discard_audio (tests read it)
        self.typed: list[str] = []  # text messages of the open user turn
        self.interrupted_with: list[str] = []
        self.images: list[tuple[int, int]] = []  # (height, width) of each image shown
        self.video_frames = 0  # camera frames pushed (the test engine reports what reached it)
        self.responses: list[ResponseOptions] = []  # the options of each reply, in order

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
        self._check_open()
        if pcm.dtype != np.float32 or pcm.ndim != 1:
            raise ValueError(f"push_audio expects float32 mono [samples], got {pcm.dtype} {pcm.shape}")
        before = self.heard_samples // self.engine.input_sample_rate
        self.heard_samples += len(pcm)
        after = self.heard_samples // self.engine.input_sample_rate
        if after > before:  # a partial transcript once per second of speech
            return [TranscriptDelta(f"({after} s) ")]
        return []

    def push_text(self, text: str) -> list[EngineEvent]:
        self._check_open()
        self.typed.append(text)
        self.turn_start = self.heard_samples  # typed text closes the audio before it
        return []

    def discard_audio(self) -> None:
        self._check_open()
        self.discarded_samples += self.heard_samples - self.turn_start
        self.heard_samples = self.turn_start

    def set_instructions(self, instructions: str | None) -> None:
        super().set_instructions(instructions)
        self.instructions = instructions  # what reached the engine (tests read it)

    def push_media(self, media: Attachment) -> list[EngineEvent]:
        self._check_open()
        if isinstance(media, Image):
            self.images.append(media.rgb.shape[:2])
        self.turn_start = self.heard_samples  # media closes the audio before it
        return []

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        self._check_open()
        check_rgb_frame(frame)
        self.video_frames += 1

    def end_turn(self) -> list[EngineEvent]:
        self._check_open()
        if self.typed and not self.heard_samples:  # a typed turn: nothing was heard to transcribe
            return []
        self.turn_start = self.heard_samples
        seconds = self.heard_samples / self.engine.input_sample_rate
        transcript = f"(spoke for {seconds:.1f} s)"
        self.history.append(("user", transcript))
        return [TranscriptDelta(transcript, final=True)]

    def respond(self, options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
        self._check_open()
        options = self._take_instructions(options)
        self.responses.append(options)
        seconds = self.heard_samples / self.engine.input_sample_rate
        self.heard_samples = self.turn_start = 0
        if self.typed:  # a typed turn: the reply repeats what was typed
            self.history.append(("user", " ".join(self.typed)))
            reply = self.engine.text_reply.format(text=" ".join(self.typed))
            self.typed = []
        else:
            reply = self.engine.reply.format(seconds=seconds)
        return self._speak(reply.split(" "), options.speech)

    def _speak(self, words: list[str], speech: bool) -> Iterator[EngineEvent]:
        said: list[str] = []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            if self.engine.step_delay:
                time.sleep(self.engine.step_delay)
            yield TextDelta(piece)
            if speech:
                yield AudioChunk(self.engine.tone(len(word), i), text=piece)
            said.append(piece)
        text = "".join(said)
        self.history.append(("assistant", text))
        yield ReplyDone(text, stats={"words": float(len(words))})

    def interrupt(self, played_text: str) -> None:
        self._check_open()
        self.interrupted_with.append(played_text)
        if self.history and self.history[-1][0] == "assistant":
            self.history[-1] = ("assistant", played_text)
        else:
            self.history.append(("assistant", played_text))

    def close(self) -> None:
        super().close()
        with self.engine.lock:
            self.engine.open_sessions -= 1


class ToneEngine:
    """Deterministic engine for tests: replies with a fixed sentence spoken as sine tones (no model)."""

    name = "test"

    def __init__(
        self,
        *,
        step_delay: float = 0.0,
        seconds_per_char: float = 0.06,
        reply: str = DEFAULT_REPLY,
        text_reply: str = TEXT_REPLY,
        input_sample_rate: int = INPUT_SAMPLE_RATE,
        output_sample_rate: int = OUTPUT_SAMPLE_RATE,
    ) -> None:
        self.step_delay = step_delay
        self.seconds_per_char = seconds_per_char
        self.reply = reply
        self.text_reply = text_reply
        self.input_sample_rate = input_sample_rate
        self.output_sample_rate = output_sample_rate
        self.lock = threading.Lock()
        self.open_sessions = 0
        self.sessions: list[ToneSession] = []

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> ToneSession:
        s = ToneSession(self, instructions=instructions, voice=voice)
        with self.lock:
            self.open_sessions += 1
            self.sessions.append(s)
            del self.sessions[:-8]  # tests look at recent sessions only; keep the list bounded
        return s

    def tone(self, chars: int, index: int) -> np.ndarray:
        return word_tone(self.output_sample_rate, self.seconds_per_char, chars, index)


def word_tone(sample_rate: int, seconds_per_char: float, chars: int, index: int) -> np.ndarray:
    """A word's speech stand-in: `seconds_per_char` per character (at least 20 ms), pitch stepping per word,
    10 ms fades; float32 mono."""
    sr = sample_rate
    n = max(int(sr * seconds_per_char * max(chars, 1)), sr // 50)
    t = np.arange(n, dtype=np.float32) / sr
    pcm = 0.3 * np.sin(2 * np.pi * (220.0 + 40.0 * (index % 6)) * t)
    fade = min(n // 2, sr // 100)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    pcm[:fade] *= ramp
    pcm[n - fade :] *= ramp[::-1]
    return pcm.astype(np.float32)
