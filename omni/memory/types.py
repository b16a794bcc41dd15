"""The memory's records, as plain typed dataclasses (glossary of the package).

- utterance: one stretch of transcribed speech or typed text by `user` or `assistant`.
- event (L1): a stretch of the stream cut at a turn boundary, a scene change or the maximum length, with its
  transcript, the pooled features of its frames (payload, on disk) and a few salient keys per feature lane.
- summary (L2): text written by the engine's LM over consecutive events (level 1) or summaries (level 2+),
  pointing at its children.
- note (L3): a per-user dialogue turn or fact, deduplicated, kept across the user's sessions.
- lane: a kind of feature vector ("audio", "video"; any name the engine uses) with its own key space.

Times are Unix epoch seconds (float). A session converts its media clock (0 at session start) by adding the
session's start time, so items of different sessions of one user sort on one axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Role = Literal["user", "assistant"]
NoteKind = Literal["turn", "fact"]
Level = Literal["L1", "L2", "L3"]


@dataclass(frozen=True)
class Utterance:
    """A transcribed or typed piece of the dialogue."""

    role: Role
    text: str
    t_start: float
    t_end: float


@dataclass
class LaneKeys:
    """The index of one feature lane of an event: salient keys (unit rows) and the time of each key's frame."""

    keys: np.ndarray  # [R, D] float32, unit rows
    key_times: np.ndarray  # [R] float64 epoch seconds
    mean_key: np.ndarray  # [D] float32, unit (kept for the one-mean-key baseline and L2 merging)


@dataclass
class FramePayload:
    """Pooled features of one lane of an event: tokens per frame, as stored in the archive."""

    times: np.ndarray  # [F] float64 epoch seconds
    tokens: np.ndarray  # [F, N, D] float16: N pooled tokens per frame


@dataclass
class Event:
    """An L1 event. `id` is 0 until the store commits it."""

    user_id: str
    session_id: str
    t_start: float
    t_end: float
    utterances: list[Utterance] = field(default_factory=list)
    lanes: dict[str, LaneKeys] = field(default_factory=dict)
    text_key: np.ndarray | None = None  # [E] float32 unit embedding of the transcript, None when silent
    id: int = 0
    summary_id: int = 0  # the L2 summary that covers it, 0 while unsummarised

    @property
    def modalities(self) -> list[str]:
        mods = sorted(self.lanes)
        if self.utterances:
            mods.append("text")
        return mods

    def transcript(self) -> str:
        return "\n".join(f"{u.role}: {u.text}" for u in self.utterances)


@dataclass
class Summary:
    """An L2 summary over `children` (event ids at level 1, summary ids above)."""

    user_id: str
    session_id: str
    level: int
    t_start: float
    t_end: float
    text: str
    children: list[int]
    text_key: np.ndarray  # [E] float32 unit
    lanes: dict[str, LaneKeys] = field(default_factory=dict)  # diverse keys drawn from the children's keys
    id: int = 0
    parent_id: int = 0


@dataclass
class Note:
    """An L3 note: a dialogue turn or a fact of one user. `count` grows when a duplicate is seen again."""

    user_id: str
    kind: NoteKind
    text: str
    text_key: np.ndarray  # [E] float32 unit
    t_first: float
    t_last: float
    session_id: str = ""
    count: int = 1
    id: int = 0


@dataclass(frozen=True)
class RecallItem:
    """One recalled item, ready for the prompt's recalled-memory slot."""

    level: Level
    item_id: int
    t_start: float
    t_end: float
    text: str  # rendered line(s) without the timestamp
    score: float
    tokens: int  # cost charged against the budget (text and features)
    # Evidence features by lane: [F, N, D] float16 frames around the best-matching key, for engines that
    # re-enter recalled audio/video as encoder features; empty for text-only items.
    features: dict[str, np.ndarray] = field(default_factory=dict)
    feature_times: dict[str, np.ndarray] = field(default_factory=dict)
    best_time: float = 0.0  # time of the best-matching key (or the item's start for text matches)


@dataclass(frozen=True)
class Recall:
    """What `SessionMemory.recall` returns: items in time order, the tokens used, and the rendered text block."""

    items: list[RecallItem]
    tokens: int
    budget_tokens: int
    text: str
    elapsed_ms: float
