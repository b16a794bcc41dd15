"""Server-side voice activity detection and turn-taking.

`SileroVad` runs the Silero VAD model shipped inside the `silero-vad` wheel (its ONNX file, no download) with
onnxruntime; it is shared by all sessions (an onnxruntime session is safe to call from one thread at a time,
and only the device worker calls it). Per-session recurrent state lives in `VadState`.

`TurnDetector` turns per-chunk speech probabilities into turns: speech must last `min_speech_ms` before it
counts (clicks and coughs are shorter), and a turn ends after `silence_ms` without speech. After `pause_ms`
of silence inside a turn it says so once (`SpeechPaused`), so engines can finish the turn's recognition and
prefill while the rest of the silence is awaited.

A semantic end of turn (`TurnConfig.semantic_eot` > 0): an engine that can judge whether the words so far
finish the user's message says how likely that is after the pause (omni.streaming.engine.TurnEndLikely, from its
prepare_turn), and the runtime hands it to `TurnDetector.end_likely`. At or above the threshold the turn ends
as soon as the probability is known (the silence is already `pause_ms` long); below it, after the full
`silence_ms`. A probability that comes after the pause is over (the user spoke again, or the full silence
already ended the turn) is ignored. Protocol clients choose it with `semantic_vad`'s `eagerness` (`EAGERNESS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from omni.streaming.frames import SpeechPaused, SpeechStarted, SpeechStopped

SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call at 16 kHz = 32 ms (the only size the v5/v6 model accepts)
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk
CHUNK_SECONDS = CHUNK / SAMPLE_RATE


@dataclass
class VadState:
    """One stream's recurrent state: LSTM state [2, 1, 128] and the last 64 samples of context."""

    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros((1, CONTEXT), np.float32))


class SileroVad:
    """The packaged Silero VAD (16 kHz), one 512-sample chunk per step."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        model = resources.files("silero_vad.data").joinpath("silero_vad.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # one chunk is ~0.1 ms of work; more threads only add overhead
        opts.inter_op_num_threads = 1
        with resources.as_file(model) as path:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def init_state(self) -> VadState:
        return VadState()

    def step(self, state: VadState, chunk: np.ndarray) -> float:
        """Speech probability of one float32 chunk of 512 samples at 16 kHz; updates `state` in place."""
        if chunk.shape != (CHUNK,):
            raise ValueError(f"VAD chunk must be {CHUNK} samples at 16 kHz, got shape {chunk.shape}")
        x = np.concatenate([state.context, chunk[None, :].astype(np.float32)], axis=1)
        prob, new_state = self._session.run(None, {"input": x, "state": state.state, "sr": self._sr})
        state.state[...] = new_state
        state.context[...] = x[:, -CONTEXT:]
        return float(np.asarray(prob).reshape(-1)[0])


# The semantic end of turn's threshold when it is on (`semantic_vad` eagerness "medium" or "auto", as the Realtime
# protocol says; `omni serve --semantic-eot 0.5`) and per eagerness. benchmarks/end_of_turn.py --heldout, the
# embedded LM on 50 held-out sentences and their 371 proper prefixes (numbers in the README). Off unless asked for
# (TurnConfig.semantic_eot 0): through `omni serve` on an idle machine (benchmarks/serve_loopback.py 10 0 embedded)
# end of speech -> first audio was 1,068 / 1,574 ms (median / p95) with it at 0.5 against 857 / 1,117 ms without.
DEFAULT_SEMANTIC_EOT = 0.5
EAGERNESS = {"low": 0.7, "medium": DEFAULT_SEMANTIC_EOT, "high": 0.2, "auto": DEFAULT_SEMANTIC_EOT}


@dataclass
class TurnConfig:
    threshold: float = 0.5  # speech when p >= threshold
    silence_ms: int = 500  # a turn ends after this much silence
    # A pause this long inside a turn lets the engine prepare its end (0: never). 200 ms: longer than most
    # gaps between words (a false pause costs a rolled-back prefill), 300 ms before the turn would end.
    pause_ms: int = 200
    min_speech_ms: int = 100  # shorter bursts (clicks, coughs) are not speech; also delays barge-in by this much
    prefix_ms: int = 300  # audio before the onset that is still given to the engine
    # Semantic end of turn: a turn ends at the pause when the engine's probability that the user's message is
    # finished is >= this (0: off, every turn waits `silence_ms`; engines that cannot tell never send one).
    semantic_eot: float = 0.0  # off (see DEFAULT_SEMANTIC_EOT); a session's semantic_vad turns it on

    def validate(self) -> TurnConfig:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.semantic_eot < 1.0:
            raise ValueError(f"semantic end-of-turn threshold must be in [0, 1) (0: off), got {self.semantic_eot}")
        if self.silence_ms < 0 or self.min_speech_ms < 0 or self.prefix_ms < 0 or self.pause_ms < 0:
            raise ValueError("silence_ms, pause_ms, min_speech_ms and prefix_ms must be >= 0")
        return self


@dataclass
class TurnDetector:
    """Hysteresis over per-chunk probabilities (speech above `threshold`, silence below `threshold - 0.15`)."""

    config: TurnConfig = field(default_factory=TurnConfig)
    speaking: bool = False  # a confirmed turn is in progress
    onset: float | None = None  # start of the current voiced run (candidate or confirmed)
    voiced_until: float = 0.0  # end of the last voiced chunk
    voiced_seconds: float = 0.0  # voiced time in the current candidate run
    paused: bool = False  # SpeechPaused was said for the current silence
    end_p: float | None = None  # the engine's probability that the turn is finished at this pause (end_likely)

    def end_likely(self, probability: float, paused_at: float) -> bool:
        """The engine's probability that the user's message is finished at the pause whose `SpeechPaused` had
        timestamp `paused_at`. Kept for the next chunk's decision if that pause is still going on; a late one
        (speech resumed, or the turn already ended) is ignored: returns whether it was kept."""
        if not (self.speaking and self.paused and self.voiced_until == paused_at):
            return False
        self.end_p = probability
        return True

    def step(self, prob: float, start: float, duration: float) -> SpeechStarted | SpeechPaused | SpeechStopped | None:
        """Feed one chunk's probability (chunk covers [start, start + duration)); returns a turn event or None."""
        c = self.config
        end = start + duration
        voiced = prob >= c.threshold or (self.onset is not None and prob >= c.threshold - 0.15)
        if voiced:
            if self.onset is None:
                self.onset, self.voiced_seconds = start, 0.0
            self.voiced_seconds += duration
            self.voiced_until = end
            self.paused, self.end_p = False, None
            if not self.speaking and self.voiced_seconds * 1000 >= c.min_speech_ms:
                self.speaking = True
                return SpeechStarted(timestamp=self.onset)
            return None
        if self.onset is None:
            return None
        gap_ms = (end - self.voiced_until) * 1000
        if not self.speaking:
            if gap_ms > max(c.min_speech_ms, 100):  # a burst too short to count, then silence: forget it
                self.onset = None
            return None
        finished = c.semantic_eot > 0 and self.end_p is not None and self.end_p >= c.semantic_eot
        if gap_ms >= c.silence_ms or (finished and gap_ms >= c.pause_ms):
            self.speaking, self.onset, self.paused, self.end_p = False, None, False, None
            return SpeechStopped(timestamp=self.voiced_until, heard_until=end, semantic=gap_ms < c.silence_ms)
        if c.pause_ms and gap_ms >= c.pause_ms and not self.paused:
            self.paused = True
            return SpeechPaused(timestamp=self.voiced_until)
        return None
