"""The input audio stage, in two halves that run on different threads.

`AudioInStage.process` is media work (resample, voice activity, turn detection) and runs on the session's
media lane, never behind model steps: speech onset is seen, and a reply cancelled, while an engine step of any
length is running. It calls no engine method; it returns turn events and the turn's audio (`TurnAudio`, at
the engine's rate) in the order they happened. Audio belongs to a turn from `prefix_ms` before the onset
until the turn ends; the silence after a `SpeechPaused` is held back and given to the engine only if speech
resumes (an engine that prepared the turn's end at the pause then sees more audio and continues the turn),
and dropped when the turn ends.

`EngineFeed` is the engine half: it hands turn audio to the engine session (`push_audio`, `end_turn`) in
device-worker jobs. While a reply is being generated or played, `hold` is set and turn audio is held back (at
most `max_hold_seconds`), so an engine never receives new user audio in the middle of its own reply; the
runtime clears `hold` once the reply is over or interrupted, and the held audio goes in first.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from omni.model.pcm import StreamingResampler, downmix, planar, to_float32
from omni.streaming.engine import EngineEvent, EngineSession
from omni.streaming.frames import AudioFrame, SpeechPaused, SpeechStarted, SpeechStopped
from omni.streaming.vad import CHUNK, CHUNK_SECONDS, SAMPLE_RATE, SileroVad, TurnConfig, TurnDetector

log = logging.getLogger(__name__)
TurnEvent = SpeechStarted | SpeechPaused | SpeechStopped


@dataclass(frozen=True)
class TurnAudio:
    """User audio inside a turn, float32 mono at the engine's input rate; `timestamp` is its first sample's."""

    pcm: np.ndarray
    timestamp: float


@dataclass(frozen=True)
class EndTurn:
    """Finish the engine's input turn (only if audio was pushed since the last one)."""


@dataclass(frozen=True)
class PrepareTurn:
    """The user paused: let the engine finish the turn's input speculatively (`prepare_turn`)."""


StageOutput = TurnEvent | TurnAudio
FeedOp = TurnAudio | EndTurn | PrepareTurn


@dataclass
class AudioInState:
    """Per-session state of the media half; only media-lane jobs touch it."""

    detector: TurnDetector
    vad_state: object
    to_engine: StreamingResampler  # 16 kHz turn audio -> the engine's input rate (passes through at 16 kHz)
    resampler: StreamingResampler | None = None  # the transport's rate -> 16 kHz, made for the first frame
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pending_ts: float = 0.0  # timestamp of pending[0]
    pre_roll: deque[tuple[float, np.ndarray]] = field(default_factory=deque)  # recent chunks before an onset
    paused_audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # silence after a SpeechPaused


class AudioInStage:
    """Shared (weights only: the VAD model); per-session data lives in `AudioInState`."""

    def __init__(self, vad: SileroVad, engine_rate: int) -> None:
        self.vad = vad
        self.engine_rate = engine_rate

    def init_state(self, turn: TurnConfig) -> AudioInState:
        return AudioInState(
            detector=TurnDetector(turn.validate()),
            vad_state=self.vad.init_state(),
            to_engine=StreamingResampler(SAMPLE_RATE, self.engine_rate),
        )

    def process(self, st: AudioInState, frames: list[AudioFrame]) -> list[StageOutput]:
        """Feed frames in arrival order; returns turn events and turn audio in the order they happened."""
        out: list[StageOutput] = []
        run: list[tuple[float, np.ndarray]] = []  # consecutive turn chunks, joined into one TurnAudio
        for frame in frames:
            pcm = self._to_16k_mono(st, frame)
            # re-anchor on every frame: after a gap in the input (packet loss, DTX) time must not lag
            st.pending_ts = frame.timestamp - len(st.pending) / SAMPLE_RATE
            st.pending = np.concatenate([st.pending, pcm])
            while len(st.pending) >= CHUNK:
                chunk, st.pending = st.pending[:CHUNK], st.pending[CHUNK:]
                t = st.pending_ts
                st.pending_ts += CHUNK_SECONDS
                self._chunk(st, chunk, t, run, out)
        self._flush_run(st, run, out)
        return out

    def _chunk(
        self,
        st: AudioInState,
        chunk: np.ndarray,
        t: float,
        run: list[tuple[float, np.ndarray]],
        out: list[StageOutput],
    ) -> None:
        det = st.detector
        was_speaking = det.speaking
        event = det.step(self.vad.step(st.vad_state, chunk), t, CHUNK_SECONDS)  # type: ignore[arg-type]
        if isinstance(event, SpeechStarted):
            self._flush_run(st, run, out)
            out.append(event)
            start = event.timestamp - det.config.prefix_ms / 1000.0
            run.extend((ts, c) for ts, c in st.pre_roll if ts >= start - 1e-6)
            st.pre_roll.clear()
        if isinstance(event, SpeechPaused):
            self._flush_run(st, run, out)
            out.append(event)
        if det.speaking and det.paused:  # silence after a pause: the engine gets it only if speech resumes
            st.paused_audio.append((t, chunk))
        elif det.speaking:
            run.extend(st.paused_audio)  # speech resumed: the held silence goes first, in order
            st.paused_audio.clear()
            run.append((t, chunk))
        elif was_speaking:  # the turn ended on this chunk; after a pause its held silence is dropped with it
            if not st.paused_audio:
                run.append((t, chunk))
            st.paused_audio.clear()
        else:
            st.pre_roll.append((t, chunk))
            keep = (det.config.prefix_ms + det.config.min_speech_ms) / 1000.0 + 2 * CHUNK_SECONDS
            while st.pre_roll and st.pre_roll[0][0] < t - keep:
                st.pre_roll.popleft()
        if isinstance(event, SpeechStopped):
            self._flush_run(st, run, out, turn_over=True)
            out.append(event)

    def _flush_run(
        self, st: AudioInState, run: list[tuple[float, np.ndarray]], out: list[StageOutput], turn_over: bool = False
    ) -> None:
        """Turn chunks -> one TurnAudio at the engine's rate; at the turn's end the resampler's tail goes too."""
        pcm = st.to_engine.push(np.concatenate([c for _, c in run])) if run else np.zeros(0, np.float32)
        if turn_over:
            pcm = np.concatenate([pcm, st.to_engine.flush()])
        if len(pcm):
            out.append(TurnAudio(pcm, run[0][0] if run else st.pending_ts))
        run.clear()

    @staticmethod
    def _to_16k_mono(st: AudioInState, frame: AudioFrame) -> np.ndarray:
        """The channel mean, then 16 kHz: the same samples the offline front end (to_mono_16k) makes."""
        if frame.pcm.dtype not in (np.int16, np.float32):
            raise ValueError(f"audio frame must be int16 or float32, got {frame.pcm.dtype}")
        if frame.channels not in (1, 2):
            raise ValueError(f"audio frame must be mono or stereo, got {frame.channels} channels")
        mono = downmix(to_float32(planar(frame.pcm, frame.channels)))
        if st.resampler is None or st.resampler.in_rate != frame.sample_rate:
            st.resampler = StreamingResampler(frame.sample_rate, SAMPLE_RATE)
        return st.resampler.push(mono)


@dataclass
class EngineFeed:
    """The engine half of one session's input: `hold`/`held` belong to the event loop, `run` to the device worker
    (the session awaits each `run` job before the next, so the two never race)."""

    auto_end_turn: bool = True  # end the engine's turn when the detector says so (server VAD)
    hold: bool = False
    max_hold_seconds: float = 30.0
    held: deque[TurnAudio] = field(default_factory=deque)
    held_seconds: float = 0.0
    held_dropped_seconds: float = 0.0
    turn_open: bool = False  # audio was pushed since the last end_turn

    def route(self, audio: TurnAudio, rate: int) -> TurnAudio | None:
        """`audio` if it may go to the engine now; otherwise it is held back (None)."""
        if not self.hold:
            return audio
        self.held.append(audio)
        self.held_seconds += len(audio.pcm) / rate
        while self.held_seconds > self.max_hold_seconds and len(self.held) > 1:
            old = self.held.popleft()
            self.held_seconds -= len(old.pcm) / rate
            self.held_dropped_seconds += len(old.pcm) / rate
        return None

    def release(self) -> list[FeedOp]:
        """The held audio as one piece, once `hold` is cleared (empty otherwise)."""
        if self.hold or not self.held:
            return []
        if self.held_dropped_seconds:
            dropped, self.held_dropped_seconds = self.held_dropped_seconds, 0.0
            log.warning("held user audio over %.0f s: dropped the oldest %.2f s", self.max_hold_seconds, dropped)
        pcm = np.concatenate([a.pcm for a in self.held])
        first = self.held[0].timestamp
        self.held.clear()
        self.held_seconds = 0.0
        return [TurnAudio(pcm, first)]

    def run(self, engine: EngineSession, ops: list[FeedOp]) -> list[EngineEvent]:
        """Device worker: push audio and end turns in order; returns the engine's events (transcripts)."""
        out: list[EngineEvent] = []
        for op in ops:
            if isinstance(op, TurnAudio):
                out.extend(engine.push_audio(op.pcm, op.timestamp))
                self.turn_open = True
            elif isinstance(op, PrepareTurn):
                if self.turn_open:
                    out.extend(engine.prepare_turn())
            elif self.turn_open:
                out.extend(engine.end_turn())
                self.turn_open = False
        return out
