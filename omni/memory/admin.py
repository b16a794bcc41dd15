"""What `omni memory list|search|show|forget|export` does, as library functions over a store (no RAM state needed).

Each returns plain JSON-able data; the CLI only prints it. Items are named `L1:<id>`, `L2:<id>`, `L3:<id>`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omni.memory.keys import unit_rows
from omni.memory.store import MemoryStore
from omni.memory.types import Event, Note, Summary
from omni.memory.user_index import UserIndex


def list_users(store: MemoryStore) -> list[dict[str, Any]]:
    return [{"user": u, "events": e, "summaries": s, "notes": n} for u, e, s, n in store.users()]


def list_items(store: MemoryStore, user_id: str) -> list[dict[str, Any]]:
    """Every item of a user, in time order, one line of text each."""
    rows = [_row(x) for x in _all_items(store, user_id)]
    return sorted(rows, key=lambda r: (r["t_start"], r["item"]))


def _all_items(store: MemoryStore, user_id: str, events: list[Event] | None = None) -> list[Event | Summary | Note]:
    items: list[Event | Summary | Note] = [*store.load_notes(user_id), *store.load_summaries(user_id)]
    return items + (store.load_events(user_id) if events is None else events)


def search(
    store: MemoryStore, user_id: str, embed: Callable[[Sequence[str]], np.ndarray], query: str, k: int = 10
) -> list[dict[str, Any]]:
    """The `k` items whose text is closest to `query` (cosine of text embeddings), best first."""
    index = UserIndex.load(store, user_id)
    q = unit_rows(np.asarray(embed([query]), dtype=np.float32))[0]
    scored: list[tuple[float, str]] = []
    for level, items in (("L3", index.notes), ("L2", index.summaries), ("L1", index.events)):
        scores = items.text_scores(q)
        scored += [(float(scores[i]), f"{level}:{int(items.ids.view[i])}") for i in np.flatnonzero(np.isfinite(scores))]
    scored.sort(key=lambda x: -x[0])
    out = []
    for score, name in scored[:k]:
        row = show(store, user_id, name)
        row["score"] = round(score, 4)
        out.append(row)
    return out


def show(store: MemoryStore, user_id: str, item: str) -> dict[str, Any]:
    """One item by name (`L1:12`), with its full text and, for events, its lanes."""
    level, _, num = item.partition(":")
    if level not in ("L1", "L2", "L3") or not num.isdigit():
        raise ValueError(f"item name {item!r}: expected L1:<id>, L2:<id> or L3:<id>")
    item_id = int(num)
    found: Event | Summary | Note | None
    if level == "L1":
        evs = store.load_events(user_id, ids=[item_id])
        found = evs[0] if evs else None
    elif level == "L2":
        found = next((s for s in store.load_summaries(user_id) if s.id == item_id), None)
    else:
        found = next((n for n in store.load_notes(user_id) if n.id == item_id), None)
    if found is None:
        raise KeyError(f"user {user_id!r} has no item {item}")
    return _row(found, full=True)


def forget(store: MemoryStore, user_id: str) -> int:
    return store.forget(user_id)


def export(store: MemoryStore, user_id: str, out_dir: Path) -> Path:
    """Write everything of a user: `memory.json` (all items, full text) and `features/L1_<id>_<lane>.npz` payloads."""
    out_dir = Path(out_dir)
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    events = store.load_events(user_id)
    for e in events:
        for lane in e.lanes:
            p = store.load_payload(user_id, e.id, lane)
            np.savez(out_dir / "features" / f"L1_{e.id}_{lane}.npz", times=p.times, tokens=p.tokens)
    doc = {
        "user": user_id,
        "exported_at": time.time(),
        "sessions": [{"id": s, "started": a, "ended": b} for s, a, b in store.sessions(user_id)],
        "items": [_row(x, full=True) for x in _all_items(store, user_id, events)],
    }
    path = out_dir / "memory.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    return path


def _row(x: Event | Summary | Note, full: bool = False) -> dict[str, Any]:
    if isinstance(x, Event):
        text = x.transcript() or f"(no speech; {', '.join(sorted(x.lanes))})"
        row: dict[str, Any] = {"item": f"L1:{x.id}", "t_start": x.t_start, "t_end": x.t_end, "text": text,
                               "session": x.session_id, "modalities": x.modalities}
        if full:
            row["lanes"] = {k: {"keys": list(v.keys.shape)} for k, v in x.lanes.items()}
            row["summary"] = x.summary_id
    elif isinstance(x, Summary):
        row = {"item": f"L2:{x.id}", "t_start": x.t_start, "t_end": x.t_end, "text": x.text, "session": x.session_id,
               "level": x.level}
        if full:
            row["children"] = [f"{'L1' if x.level == 1 else 'L2'}:{c}" for c in x.children]
    else:
        row = {"item": f"L3:{x.id}", "t_start": x.t_first, "t_end": x.t_last, "text": x.text, "kind": x.kind,
               "count": x.count}
    if not full and len(row["text"]) > 100:
        row["text"] = row["text"][:97] + "..."
    return row
