"""Test helpers: a tiny deterministic engine and spoken test audio made with the packaged espeak-ng.

`ToneEngine` implements the engine interface without a model: it "recognises" how long the user spoke and
replies with a fixed sentence, one word per step, each word as a `TextDelta` followed by an `AudioChunk` of a
sine tone as long as the word takes to say. `step_delay` makes each step slow, so a reply lasts long enough to
be interrupted. `synthesize_speech` speaks text with espeak-ng from the `espeakng-loader` wheel (ctypes);
run it in a child process (`python -m streaming.testing speak TEXT OUT.wav`) so its global library state never
meets another espeak-ng user in the same process.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.pcm import resample, to_int16
from streaming.engine import AudioChunk, EngineEvent, ReplyDone, TextDelta, TranscriptDelta

DEFAULT_REPLY = "Hello, I heard you speak for {seconds:.1f} seconds, and this is my answer to you."


@dataclass
class ToneSession:
    """One conversation with `ToneEngine`. `history` holds (role, text) pairs as the engine remembers them."""

    engine: ToneEngine
    instructions: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    heard_samples: int = 0
    video_frames: int = 0
    closed: bool = False
    interrupted_with: list[str] = field(default_factory=list)

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

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        self._check_open()
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"push_video expects RGB uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        self.video_frames += 1

    def end_turn(self) -> list[EngineEvent]:
        self._check_open()
        seconds = self.heard_samples / self.engine.input_sample_rate
        transcript = f"(spoke for {seconds:.1f} s)"
        self.history.append(("user", transcript))
        return [TranscriptDelta(transcript, final=True)]

    def respond(self) -> Iterator[EngineEvent]:
        self._check_open()
        seconds = self.heard_samples / self.engine.input_sample_rate
        self.heard_samples = 0
        words = self.engine.reply.format(seconds=seconds).split(" ")
        said: list[str] = []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            if self.engine.step_delay:
                time.sleep(self.engine.step_delay)
            yield TextDelta(piece)
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
        self.closed = True
        with self.engine.lock:
            self.engine.open_sessions -= 1

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("engine session is closed")


class ToneEngine:
    """Deterministic engine for tests: replies with a fixed sentence spoken as sine tones (no model)."""

    name = "test"

    def __init__(
        self,
        *,
        step_delay: float = 0.0,
        seconds_per_char: float = 0.06,
        reply: str = DEFAULT_REPLY,
        input_sample_rate: int = 16000,
        output_sample_rate: int = 24000,
    ) -> None:
        self.step_delay = step_delay
        self.seconds_per_char = seconds_per_char
        self.reply = reply
        self.input_sample_rate = input_sample_rate
        self.output_sample_rate = output_sample_rate
        self.lock = threading.Lock()
        self.open_sessions = 0
        self.sessions: list[ToneSession] = []

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> ToneSession:
        s = ToneSession(self, instructions=instructions)
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


# ---- spoken test audio (espeak-ng from the espeakng-loader wheel) ----

_SYNC_OUTPUT = 2  # AUDIO_OUTPUT_SYNCHRONOUS: synthesis returns samples through the callback
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def synthesize_speech(text: str, voice: str = "en-us", words_per_minute: int = 150) -> tuple[np.ndarray, int]:
    """Speak `text`; returns (int16 mono samples, sample rate). Initialises espeak-ng in this process."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data_dir = str(Path(espeakng_loader.get_data_path()).parent)  # the folder holding espeak-ng-data
    rate = lib.espeak_Initialize(_SYNC_OUTPUT, 0, data_dir.encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {data_dir}")
    chunks: list[np.ndarray] = []

    def collect(wav: ctypes._Pointer, n: int, events: int | None) -> int:
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(1, words_per_minute, 0)  # espeakRATE
    data = text.encode()
    lib.espeak_Synth(data, ctypes.c_size_t(len(data) + 1), 0, 1, 0, 0, None, None)  # POS_CHARACTER, CHARS_AUTO
    lib.espeak_Synchronize()
    if not chunks:
        raise RuntimeError("espeak-ng produced no audio")
    return np.concatenate(chunks).astype(np.int16), int(rate)


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono WAV")
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def main(argv: list[str]) -> int:
    """`python -m streaming.testing speak TEXT OUT.wav [RATE] [PAD_SECONDS]`: a test WAV, padded with silence."""
    if len(argv) < 3 or argv[0] != "speak":
        print("usage: python -m streaming.testing speak TEXT OUT.wav [RATE] [PAD_SECONDS]", file=sys.stderr)
        return 2
    pcm, rate = synthesize_speech(argv[1])
    target = int(argv[3]) if len(argv) > 3 else rate
    pcm = to_int16(resample(pcm, rate, target))
    pad = float(argv[4]) if len(argv) > 4 else 0.0
    pcm = np.concatenate([pcm, np.zeros(int(pad * target), np.int16)])
    write_wav(argv[2], pcm, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
