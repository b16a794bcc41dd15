"""The input audio stage (runs on the device worker): resample, detect voice, and feed the engine.

Frames in (any rate and layout), turn events and engine events out. Audio reaches the engine only inside a
turn: from `prefix_ms` before the onset until the turn ends. While a reply is being generated or played,
`hold` is set and the turn's audio is held back (at most `max_hold_seconds`), so an engine never receives new
user audio in the middle of its own reply; the runtime clears `hold` once the reply is over or interrupted,
and the held audio goes in first.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np

from streaming.engine import EngineEvent, EngineSession
from streaming.frames import AudioFrame, SpeechStarted, SpeechStopped
from streaming.vad import CHUNK, CHUNK_SECONDS, SAMPLE_RATE, SileroVad, TurnConfig, TurnDetector

log = logging.getLogger(__name__)
TurnEvent = SpeechStarted | SpeechStopped
StageOutput = TurnEvent | EngineEvent


@dataclass
class AudioInState:
    """Per-session state of the input stage."""

    detector: TurnDetector
    vad_state: object
    auto_end_turn: bool = True  # end the engine's turn when the detector says so (server VAD)
    hold: bool = False
    max_hold_seconds: float = 30.0
    resampler: av.AudioResampler | None = None
    resampler_key: tuple[int, int, str] | None = None
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pending_ts: float = 0.0  # timestamp of pending[0]
    pre_roll: deque[tuple[float, np.ndarray]] = field(default_factory=deque)  # recent chunks before an onset
    held: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    held_dropped_seconds: float = 0.0
    turn_open: bool = False  # audio was pushed since the last end_turn


class AudioInStage:
    """Shared (weights only: the VAD model); per-session data lives in `AudioInState`."""

    def __init__(self, vad: SileroVad, engine_rate: int) -> None:
        self.vad = vad
        self.engine_rate = engine_rate

    def init_state(self, turn: TurnConfig, auto_end_turn: bool = True) -> AudioInState:
        return AudioInState(
            detector=TurnDetector(turn.validate()), vad_state=self.vad.init_state(), auto_end_turn=auto_end_turn
        )

    def process(self, st: AudioInState, frames: list[AudioFrame], engine: EngineSession) -> list[StageOutput]:
        """Feed frames in arrival order; returns turn and engine events in the order they happened."""
        out: list[StageOutput] = []
        self._release_held(st, engine, out)
        to_push: list[tuple[float, np.ndarray]] = []
        for frame in frames:
            pcm = self._to_16k_mono(st, frame)
            # re-anchor on every frame: after a gap in the input (packet loss, DTX) time must not lag
            st.pending_ts = frame.timestamp - len(st.pending) / SAMPLE_RATE
            st.pending = np.concatenate([st.pending, pcm])
            while len(st.pending) >= CHUNK:
                chunk, st.pending = st.pending[:CHUNK], st.pending[CHUNK:]
                t = st.pending_ts
                st.pending_ts += CHUNK_SECONDS
                self._chunk(st, chunk, t, engine, to_push, out)
        self._push(st, engine, to_push, out)
        return out

    def end_turn(self, st: AudioInState, engine: EngineSession) -> list[StageOutput]:
        """Finish the engine's input turn (manual turns: client response.create)."""
        out: list[StageOutput] = []
        self._release_held(st, engine, out)
        if st.turn_open:
            out.extend(engine.end_turn())
            st.turn_open = False
        return out

    def _chunk(
        self,
        st: AudioInState,
        chunk: np.ndarray,
        t: float,
        engine: EngineSession,
        to_push: list[tuple[float, np.ndarray]],
        out: list[StageOutput],
    ) -> None:
        det = st.detector
        was_speaking = det.speaking
        event = det.step(self.vad.step(st.vad_state, chunk), t, CHUNK_SECONDS)  # type: ignore[arg-type]
        if isinstance(event, SpeechStarted):
            start = event.timestamp - det.config.prefix_ms / 1000.0
            to_push.extend((ts, c) for ts, c in st.pre_roll if ts >= start - 1e-6)
            st.pre_roll.clear()
            out.append(event)
        if det.speaking or was_speaking:
            to_push.append((t, chunk))
        else:
            st.pre_roll.append((t, chunk))
            keep = (det.config.prefix_ms + det.config.min_speech_ms) / 1000.0 + 2 * CHUNK_SECONDS
            while st.pre_roll and st.pre_roll[0][0] < t - keep:
                st.pre_roll.popleft()
        if isinstance(event, SpeechStopped):
            self._push(st, engine, to_push, out)
            to_push.clear()
            out.append(event)
            if st.auto_end_turn and not st.hold:
                out.extend(self.end_turn(st, engine))

    def _push(
        self, st: AudioInState, engine: EngineSession, chunks: list[tuple[float, np.ndarray]], out: list[StageOutput]
    ) -> None:
        if not chunks:
            return
        if st.hold:
            st.held.extend(chunks)
            while len(st.held) * CHUNK_SECONDS > st.max_hold_seconds:
                st.held.popleft()
                st.held_dropped_seconds += CHUNK_SECONDS
            return
        pcm = np.concatenate([c for _, c in chunks])
        out.extend(engine.push_audio(self._engine_rate(pcm), chunks[0][0]))
        st.turn_open = True

    def _release_held(self, st: AudioInState, engine: EngineSession, out: list[StageOutput]) -> None:
        if st.hold or not st.held:
            return
        if st.held_dropped_seconds:
            log.warning(
                "held user audio over %.0f s: dropped the oldest %.2f s", st.max_hold_seconds, st.held_dropped_seconds
            )
            st.held_dropped_seconds = 0.0
        held = list(st.held)
        st.held.clear()
        self._push(st, engine, held, out)

    def _engine_rate(self, pcm16k: np.ndarray) -> np.ndarray:
        if self.engine_rate == SAMPLE_RATE:
            return pcm16k
        n = int(round(len(pcm16k) * self.engine_rate / SAMPLE_RATE))
        x = np.interp(np.arange(n) * SAMPLE_RATE / self.engine_rate, np.arange(len(pcm16k)), pcm16k)
        return x.astype(np.float32)

    @staticmethod
    def _to_16k_mono(st: AudioInState, frame: AudioFrame) -> np.ndarray:
        pcm = frame.pcm
        if pcm.dtype == np.int16:
            fmt = "s16"
        elif pcm.dtype == np.float32:
            fmt = "flt"
        else:
            raise ValueError(f"audio frame must be int16 or float32, got {pcm.dtype}")
        if frame.channels not in (1, 2):
            raise ValueError(f"audio frame must be mono or stereo, got {frame.channels} channels")
        if frame.sample_rate == SAMPLE_RATE and frame.channels == 1:
            x = pcm.reshape(-1)
            return x.astype(np.float32) / 32768.0 if fmt == "s16" else x
        layout = "mono" if frame.channels == 1 else "stereo"
        key = (frame.sample_rate, frame.channels, fmt)
        if st.resampler is None or st.resampler_key != key:
            st.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            st.resampler_key = key
        packed = pcm.reshape(1, -1) if pcm.ndim == 1 or pcm.shape[0] == 1 else pcm.T.reshape(1, -1)
        avf = av.AudioFrame.from_ndarray(np.ascontiguousarray(packed), format=fmt, layout=layout)
        avf.sample_rate = frame.sample_rate
        parts = [f.to_ndarray().reshape(-1) for f in st.resampler.resample(avf)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
