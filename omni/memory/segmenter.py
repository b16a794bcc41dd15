"""L1 segmentation: the stream cut into events at turn boundaries, scene changes and a maximum length.

Rules (memory.md section 5.1): a scene change is a frame whose pooled vector has cosine <= 0.9 to the running mean
of the open event in a scene lane (IXC2.5-OL and Dispider use 0.9 on SigLIP features); a turn boundary comes from
the VAD or the end of a typed turn. A scene change cuts once the event is `min_s` long (3 s: shorter events cost a
key set each and carry too little to summarise); a turn boundary cuts once it is `min_turn_s` long (10 s: in a
lively conversation turns end every 5-10 s, and cutting at each one doubled the events per hour, to ~510, and
with them the RAM index); every event is cut at `max_s` (30 s: a key set of 8 cannot cover much more).
Payload: a frame whose every token has cosine >= 0.95 to the same token of the last frame kept (StreamMem's
near-duplicate filter, memory.md 5.1) is left out of the payload and the key candidates, unless the last kept frame
is `keep_every_s` (2 s) old: a static scene costs a frame every 2 s instead of 2 a second, and an evidence window
of +-2 s always holds a frame. Per frame the work is a mean and two products over [N, D] (well under the 5 ms/frame
ingest budget); key selection runs once per event, at its close.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from omni.memory.keys import select_salient_keys, unit_rows
from omni.memory.types import Event, FramePayload, Utterance


@dataclass(frozen=True)
class SegmenterConfig:
    min_s: float = 3.0
    min_turn_s: float = 10.0
    max_s: float = 30.0
    scene_cos: float = 0.9
    scene_lanes: tuple[str, ...] = ("video",)
    keys_per_event: int = 8
    # Audio pools to fewer tokens per second than video (1 pooled token per block vs 16 per frame), so fewer
    # keys cover it; 4 instead of 8 keeps the RAM index under 5 MB/h (8 video + 4 audio keys x 256 dims x 4 bytes
    # x ~280 events/h = 3.5 MB/h).
    keys_per_lane: dict[str, int] = field(default_factory=lambda: {"audio": 4})
    nms_cos: float = 0.7
    dedupe_cos: float = 0.95
    keep_every_s: float = 2.0


@dataclass
class ClosedEvent:
    """An event cut from the stream, with its payload, on its way to the store."""

    event: Event
    payloads: dict[str, FramePayload]


@dataclass
class _Lane:
    times: list[float] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)  # [N, D] each
    pooled_sum: np.ndarray | None = None  # sum of unit pooled frame vectors (running mean, for scene change)
    last_kept: np.ndarray | None = None  # unit tokens [N, D] of the last frame kept in the payload


class EventSegmenter:
    """Per-session state of the L1 cutter. Feed frames and utterances in time order; closed events come back."""

    def __init__(self, user_id: str, session_id: str, config: SegmenterConfig | None = None) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.config = config or SegmenterConfig()
        self._lanes: dict[str, _Lane] = {}
        self._utterances: list[Utterance] = []
        self._t_start: float | None = None
        self._t_end: float = 0.0

    @property
    def open_span(self) -> tuple[float, float] | None:
        return None if self._t_start is None else (self._t_start, self._t_end)

    def add_frame(self, lane: str, t: float, tokens: np.ndarray) -> list[ClosedEvent]:
        """One frame of pooled encoder tokens [N, D] (or a single vector [D]) at epoch time `t`."""
        tok = np.asarray(tokens, dtype=np.float32)
        if tok.ndim == 1:
            tok = tok[None, :]
        if tok.ndim != 2 or tok.shape[0] == 0:
            raise ValueError(f"frame tokens for lane {lane!r} must be [N, D] or [D], got shape {tokens.shape}")
        closed: list[ClosedEvent] = []
        pooled = unit_rows(tok.mean(axis=0, keepdims=True))[0]
        state = self._lanes.get(lane)
        if state is not None and state.tokens and state.tokens[0].shape[1] != tok.shape[1]:
            raise ValueError(f"lane {lane!r} changed its dimension from {state.tokens[0].shape[1]} to {tok.shape[1]}")
        if self._t_start is not None:
            length = t - self._t_start
            scene_change = (
                lane in self.config.scene_lanes
                and state is not None
                and state.pooled_sum is not None
                and float(pooled @ unit_rows(state.pooled_sum[None, :])[0]) <= self.config.scene_cos
            )
            if length >= self.config.max_s or (scene_change and length >= self.config.min_s):
                closed.extend(self.close())
                state = None
        if state is None:
            state = self._lanes.setdefault(lane, _Lane())
        unit_tok = unit_rows(tok)
        if self._keep(state, t, unit_tok):
            state.times.append(t)
            state.tokens.append(tok)
            state.last_kept = unit_tok
        state.pooled_sum = pooled.copy() if state.pooled_sum is None else state.pooled_sum + pooled
        self._extend(t, t)
        return closed

    def _keep(self, state: _Lane, t: float, unit_tok: np.ndarray) -> bool:
        last = state.last_kept
        if last is None or last.shape != unit_tok.shape or t - state.times[-1] >= self.config.keep_every_s:
            return True
        return float((last * unit_tok).sum(axis=1).min()) < self.config.dedupe_cos

    def add_utterance(self, utterance: Utterance) -> list[ClosedEvent]:
        """A transcript piece; it belongs to the open event (an event longer than `max_s` is cut first)."""
        closed: list[ClosedEvent] = []
        if self._t_start is not None and utterance.t_end - self._t_start >= self.config.max_s:
            closed.extend(self.close())
        self._utterances.append(utterance)
        self._extend(utterance.t_start, utterance.t_end)
        return closed

    def revise(self, old: Utterance, text: str) -> bool:
        """Replace `old` in the open event by the same utterance saying `text`; False when it is not there."""
        if old not in self._utterances:
            return False
        self._utterances[self._utterances.index(old)] = Utterance(old.role, text, old.t_start, old.t_end)
        return True

    def turn_boundary(self, t: float) -> list[ClosedEvent]:
        """The VAD's end of a turn (or a typed turn's end): cut here unless the event is shorter than `min_turn_s`."""
        if self._t_start is None or t - self._t_start < self.config.min_turn_s:
            return []
        return self.close()

    def close(self) -> list[ClosedEvent]:
        """Close the open event now (also at session end); nothing to close gives []."""
        if self._t_start is None:
            return []
        event = Event(
            user_id=self.user_id,
            session_id=self.session_id,
            t_start=self._t_start,
            t_end=self._t_end,
            utterances=list(self._utterances),
        )
        payloads: dict[str, FramePayload] = {}
        for name, lane in sorted(self._lanes.items()):
            frames = np.stack(lane.tokens)  # [F, N, D]
            times = np.asarray(lane.times, dtype=np.float64)
            flat = frames.reshape(-1, frames.shape[-1])
            flat_times = np.repeat(times, frames.shape[1])
            n_keys = self.config.keys_per_lane.get(name, self.config.keys_per_event)
            event.lanes[name] = select_salient_keys(flat, flat_times, n_keys, self.config.nms_cos)
            payloads[name] = FramePayload(times=times, tokens=frames.astype(np.float16))
        self._lanes = {}
        self._utterances = []
        self._t_start = None
        return [ClosedEvent(event=event, payloads=payloads)]

    def _extend(self, t0: float, t1: float) -> None:
        if self._t_start is None:
            self._t_start = t0
            self._t_end = t1
        else:
            self._t_start = min(self._t_start, t0)
            self._t_end = max(self._t_end, t1)
