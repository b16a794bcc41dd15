"""L2: summaries written in the background by an injected `summarize(texts) -> str` (the engine's own LM).

Every `every_events` events (10, StreamChat's interval) or `every_s` seconds of stream (5 min), the unsummarised
events of a session become one level-1 summary; every `fan_in` (10) unparented summaries of a level become one
summary of the next level (minutes -> hours -> days). Each summary commits in one transaction with its children's
pointers, so a process killed mid-summary leaves the children unsummarised and the work is redone later.

Queue policy: requests coalesce into a set of (user, session) keys, at most one per session, so the queue is
bounded by the number of sessions and a full burst loses nothing: each run reads what is still unsummarised from
the store. The thread runs at the lowest CPU priority (nice 19, Linux threads are scheduled separately), and the
summarizer is expected to run its LM step at low priority on the engine's device worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from omni.memory.keys import merge_lane_keys, unit_rows
from omni.memory.store import MemoryStore
from omni.memory.types import Event, LaneKeys, Summary
from omni.memory.user_index import UserIndex

log = logging.getLogger(__name__)

Summarizer = Callable[[Sequence[str]], str]
TextEmbedder = Callable[[Sequence[str]], np.ndarray]


def concat_summary(texts: Sequence[str], max_chars: int = 600) -> str:
    """A model-free stand-in summarizer: the children's texts joined and cut (tests, benchmarks, no LM)."""
    joined = " | ".join(t.strip() for t in texts if t.strip())
    return joined if len(joined) <= max_chars else joined[: max_chars - 3] + "..."


@dataclass(frozen=True)
class ConsolidatorConfig:
    every_events: int = 10
    every_s: float = 300.0
    fan_in: int = 10
    max_level: int = 4
    keys_per_summary: int = 8  # per lane; 16 would add ~0.5 MB/h to the RAM index for the rare demoted path


def event_text(e: Event) -> str:
    return e.transcript() or f"(no speech; {', '.join(sorted(e.lanes)) or 'nothing'})"


class Consolidator:
    """Background L2 writer. `request` is cheap and non-blocking; `run_once` does one session's work synchronously."""

    def __init__(
        self, store: MemoryStore, index_of: Callable[[str], UserIndex], summarize: Summarizer,
        embed: TextEmbedder, config: ConsolidatorConfig | None = None,
    ) -> None:
        self.store = store
        self.index_of = index_of
        self.summarize = summarize
        self.embed = embed
        self.config = config or ConsolidatorConfig()
        self._pending: dict[tuple[str, str], bool] = {}  # (user, session) -> final
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="memory-consolidator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def request(self, user_id: str, session_id: str, final: bool = False) -> None:
        with self._cond:
            key = (user_id, session_id)
            self._pending[key] = self._pending.get(key, False) or final
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        if hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                (user_id, session_id), final = self._pending.popitem()
                self._busy = True
            try:
                self.run_once(user_id, session_id, final)
            except Exception:
                self.errors += 1
                log.exception("memory consolidation of session %s (user %s) failed", session_id, user_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def run_once(self, user_id: str, session_id: str, final: bool = False) -> int:
        """Write every summary that is due for one session; `final` also closes partial groups. Returns the count."""
        written = 0
        while True:
            events = self.store.unsummarised_events(user_id, session_id)
            n = self.config.every_events
            due = len(events) >= n or (events and events[-1].t_end - events[0].t_start >= self.config.every_s)
            if not events or not (due or final):
                break
            group = events[:n]
            if not final and len(events) < n:  # due by time: everything older than every_s
                group = [e for e in events if e.t_end - events[0].t_start <= self.config.every_s] or events[:1]
            self._write(user_id, session_id, 1, [e.id for e in group], [event_text(e) for e in group],
                        group[0].t_start, group[-1].t_end, [e.lanes for e in group])
            written += 1
        for level in range(1, self.config.max_level):
            while True:
                kids = self.store.unparented_summaries(user_id, session_id, level)
                if len(kids) < self.config.fan_in and not (final and len(kids) >= 2):
                    break
                kids = kids[: self.config.fan_in]
                self._write(user_id, session_id, level + 1, [k.id for k in kids], [k.text for k in kids],
                            kids[0].t_start, kids[-1].t_end, [k.lanes for k in kids])
                written += 1
        return written

    def _write(
        self, user_id: str, session_id: str, level: int, children: list[int], texts: list[str],
        t_start: float, t_end: float, child_lanes: list[dict[str, LaneKeys]],
    ) -> None:
        text = self.summarize(texts).strip()
        if not text:
            raise ValueError(f"summarize returned an empty summary for {len(texts)} texts of session {session_id}")
        key = unit_rows(np.asarray(self.embed([text]), dtype=np.float32))[0]
        names = sorted({name for lanes in child_lanes for name in lanes})
        lanes = {
            name: merge_lane_keys([ls[name] for ls in child_lanes if name in ls], self.config.keys_per_summary)
            for name in names
        }
        summary = Summary(user_id=user_id, session_id=session_id, level=level, t_start=t_start, t_end=t_end,
                          text=text, children=children, text_key=key, lanes=lanes)
        self.index_of(user_id).add_summary(self.store.commit_summary(summary))
