"""Per-turn latency figures and a server-wide registry rendered in the Prometheus text format.

All times are seconds on the session's media clock. A turn's figures are differences of those timestamps:
end of user speech (the end of the last voiced audio, so they include the `silence_ms` wait) -> first text
delta, -> first audio sample handed to the transport; barge-in is speech onset -> output audio stopped.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (torch stays out of this module's imports)
    from omni.model.lm.cuda_graph import GraphCapture


@dataclass
class TurnMetrics:
    turn: int
    end_of_speech: float | None = None  # end of the user's last voiced audio (None for a client response.create)
    # End of the audio the turn detector had heard when it ended the turn (media time, like end_of_speech): the
    # silence it waited is the difference; `semantic_end`: ended at the pause on the engine's word (omni.streaming.vad).
    turn_end_heard: float | None = None
    semantic_end: bool = False
    end_probability: float | None = None  # the engine's last probability that the turn was finished (or None)
    response_start: float | None = None
    first_text: float | None = None
    first_audio: float | None = None  # first assistant sample handed to the transport
    audio_seconds: float = 0.0  # assistant speech generated
    compute_seconds: float = 0.0  # worker time spent generating it
    barge_in_seconds: float | None = None
    dropped_input_frames: int = 0  # input audio frames lost to the queue policy during this turn
    interrupted: bool = False

    @staticmethod
    def _ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    @property
    def rtf(self) -> float | None:
        """Real-time factor of speech output: compute time / audio time (< 1 is faster than real time)."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    def as_event_fields(self) -> dict[str, float | int | bool | None]:
        origin = self.end_of_speech if self.end_of_speech is not None else self.response_start
        return {
            "turn": self.turn,
            "end_of_speech_to_turn_end_ms": self._ms(self.end_of_speech, self.turn_end_heard),
            "semantic_end_of_turn": self.semantic_end,
            "turn_end_probability": None if self.end_probability is None else round(self.end_probability, 4),
            "end_of_speech_to_first_text_ms": self._ms(origin, self.first_text),
            "end_of_speech_to_first_audio_ms": self._ms(origin, self.first_audio),
            "response_start_to_first_audio_ms": self._ms(self.response_start, self.first_audio),
            "real_time_factor": None if self.rtf is None else round(self.rtf, 4),
            "audio_seconds": round(self.audio_seconds, 3),
            "barge_in_ms": None if self.barge_in_seconds is None else round(self.barge_in_seconds * 1000.0, 1),
            "interrupted": self.interrupted,
            "dropped_input_frames": self.dropped_input_frames,
        }


_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.8, 1.0, 1.5, 2.5, 5.0, 10.0)
_RTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0)


@dataclass
class _Histogram:
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        i = bisect.bisect_left(self.buckets, v)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += v
        self.n += 1


class ServerMetrics:
    """Counters, gauges and histograms for one server process (owned by the app, passed to sessions)."""

    def __init__(self, prefix: str = "omni") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.counters: dict[str, tuple[str, float]] = {}
        self.gauges: dict[str, tuple[str, float]] = {}
        self.histograms: dict[str, _Histogram] = {
            "end_of_speech_to_first_text_seconds": _Histogram(
                "end of user speech to first reply text", _LATENCY_BUCKETS
            ),
            "end_of_speech_to_first_audio_seconds": _Histogram(
                "end of user speech to first reply audio sent", _LATENCY_BUCKETS
            ),
            "barge_in_seconds": _Histogram("user speech onset to assistant audio stopped", _LATENCY_BUCKETS),
            "real_time_factor": _Histogram("compute time / audio time of the reply speech", _RTF_BUCKETS),
        }

    def inc(self, name: str, help: str, by: float = 1.0) -> None:
        with self._lock:
            self.counters[name] = (help, self.counters.get(name, (help, 0.0))[1] + by)

    def set_gauge(self, name: str, help: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = (help, value)

    def add_gauge(self, name: str, help: str, by: float) -> None:
        with self._lock:
            self.gauges[name] = (help, self.gauges.get(name, (help, 0.0))[1] + by)

    def record_graph_captures(self, captures: Iterable[GraphCapture]) -> None:
        """Gauges of the engine's start-up CUDA graph capture, per pool (none when nothing was captured or tried:
        the CPU, OMNI_CUDA_GRAPHS=0)."""
        for c in captures:
            self.set_gauge(f"cuda_graph_capture_seconds_{c.pool}",
                           f"start-up CUDA graph capture of the {c.pool} decode step, every batch size", c.seconds)
            self.set_gauge(f"cuda_graph_batch_sizes_{c.pool}",
                           f"batch sizes of the {c.pool} decode step captured as CUDA graphs (0: it runs eagerly, "
                           "the start-up log says why)", len(c.sizes))

    def observe_turn(self, m: TurnMetrics) -> None:
        origin = m.end_of_speech if m.end_of_speech is not None else m.response_start
        with self._lock:
            if origin is not None and m.first_text is not None:
                self.histograms["end_of_speech_to_first_text_seconds"].observe(m.first_text - origin)
            if origin is not None and m.first_audio is not None:
                self.histograms["end_of_speech_to_first_audio_seconds"].observe(m.first_audio - origin)
            if m.barge_in_seconds is not None:
                self.histograms["barge_in_seconds"].observe(m.barge_in_seconds)
            if m.rtf is not None:
                self.histograms["real_time_factor"].observe(m.rtf)
        self.inc("turns_total", "assistant replies started")
        if m.interrupted:
            self.inc("barge_ins_total", "replies cut short by user speech or a client cancel")

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        p, out = self.prefix, []
        with self._lock:
            for name, (help, v) in sorted(self.counters.items()):
                out += [f"# HELP {p}_{name} {help}", f"# TYPE {p}_{name} counter", f"{p}_{name} {v:g}"]
            for name, (help, v) in sorted(self.gauges.items()):
                out += [f"# HELP {p}_{name} {help}", f"# TYPE {p}_{name} gauge", f"{p}_{name} {v:g}"]
            for name, h in sorted(self.histograms.items()):
                out += [f"# HELP {p}_{name} {h.help}", f"# TYPE {p}_{name} histogram"]
                cum = 0
                for le, c in zip(h.buckets, h.counts or [0] * len(h.buckets)):
                    cum += c
                    out.append(f'{p}_{name}_bucket{{le="{le:g}"}} {cum}')
                out += [
                    f'{p}_{name}_bucket{{le="+Inf"}} {h.n}',
                    f"{p}_{name}_sum {h.total:g}",
                    f"{p}_{name}_count {h.n}",
                ]
        return "\n".join(out) + "\n"
