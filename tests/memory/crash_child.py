"""A child process that streams into a memory store until it is killed (for test_crash.py).

Usage: python -m tests.memory.crash_child DIR SESSION SEED. Prints "ready" (gates of the consolidator, finishing
sessions killed earlier, may come before it), then "committed N E S DIGEST" each time
N events of this session are known committed (E events and S summaries of the user in its RAM index, DIGEST their
`index_digest`). At each gate it prints "gate NAME" and waits for a line "go" on stdin, so the parent can kill it
at a known point whatever the machine's load:
- "frame": the main thread has added a frame (ingest, an event open),
- "commit": the writer thread is inside an event's transaction (its row written, its lanes not yet),
- "consolidation": the consolidator is inside a summary's transaction (the summary written, its children not yet
  pointed at it),
- "summary": the consolidator is inside the summarizer (the engine's LM at work).
One gate is open at a time (a lock), so answers pair with gates in order.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from omni.memory.consolidator import ConsolidatorConfig, concat_summary
from omni.memory.index import ItemIndex
from omni.memory.segmenter import SegmenterConfig
from omni.memory.session import Memory, MemoryConfig
from omni.memory.store import MemoryStore
from omni.memory.testing import HashingEmbedder
from omni.memory.user_index import UserIndex

USER = "crash-user"
_gate_lock = threading.Lock()


def gate(name: str) -> None:
    with _gate_lock:
        print(f"gate {name}", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(f"gate {name}: no 'go' from the parent")


def _items_digest(h: Any, items: ItemIndex, n: int) -> None:
    """The first `n` items (ids, spans, text keys, lane keys) but not their parent pointers, which a summary
    committed later may set."""
    for arr in (items.ids.view, items.t_start.view, items.t_end.view, items.has_text.view):
        h.update(np.ascontiguousarray(arr[:n]).tobytes())
    if items.text is not None:
        h.update(np.ascontiguousarray(items.text.view[:n]).tobytes())
    for name in sorted(items.lanes):
        lane = items.lanes[name]
        rows = lane.pos.view < n
        h.update(name.encode())
        for arr in (lane.keys.view, lane.times.view, lane.pos.view):
            h.update(np.ascontiguousarray(arr[rows]).tobytes())


def index_digest(index: UserIndex, n_events: int, n_summaries: int) -> str:
    """A digest of the first events and summaries of a user's RAM index (they enter in commit order, so after a
    restart the same prefix must hash the same)."""
    h = hashlib.sha256()
    with index.lock:
        _items_digest(h, index.events, n_events)
        _items_digest(h, index.summaries, n_summaries)
        for sid in index.summaries.ids.view[:n_summaries]:
            h.update(index.summary_texts[int(sid)].text.encode())
    return h.hexdigest()


def gated_summary(texts: Sequence[str]) -> str:
    gate("summary")
    return concat_summary(texts)


def gate_inside_transactions(store: MemoryStore) -> None:
    """Open a gate in the middle of the event and summary transactions (between two of their statements)."""
    exec_sql: Callable[..., Any] = store._exec

    def _exec(cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql.startswith("INSERT INTO event_lanes"):
            gate("commit")
        elif sql.startswith(("UPDATE events SET summary_id", "UPDATE summaries SET parent_id")):
            gate("consolidation")
        return exec_sql(cur, sql, params)

    store._exec = _exec  # type: ignore[method-assign]


def main(folder: str, session: str, seed: int) -> None:
    cfg = MemoryConfig(segmenter=SegmenterConfig(min_s=1.0, max_s=4.0),
                       consolidator=ConsolidatorConfig(every_events=3, fan_in=3))
    store = MemoryStore.open(folder)
    gate_inside_transactions(store)
    memory = Memory(store, HashingEmbedder(64), cfg, summarize=gated_summary)
    mem = memory.open_session(USER, session, started_at=1_800_000_000.0 + seed * 10_000)
    rng = np.random.default_rng(seed)
    with _gate_lock:
        print("ready", flush=True)
    t = 0
    committed = 0
    while True:
        mem.add_frame("video", float(t), rng.standard_normal((16, 32)))
        if t % 3 == 0:
            mem.add_utterance("user", f"utterance {t} of session {session}", float(t), t + 0.5)
        gate("frame")
        t += 1
        if t % 20 == 0:
            memory.flush()
            committed = memory.stats.events
            index = memory.user_index(USER)
            n_events, n_summaries = len(index.events), len(index.summaries)
            digest = index_digest(index, n_events, n_summaries)
            with _gate_lock:
                print(f"committed {committed} {n_events} {n_summaries} {digest}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
