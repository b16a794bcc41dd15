"""Everything of one user held in RAM: the event, summary and note indexes, and the texts of summaries and notes.

The memory's writer and consolidator threads add; recalls read under the same lock, so a recall sees either all of
a committed item or none of it. Items enter in id (commit) order, the same order a reload from the store uses, so
the index rebuilt after a restart is identical to the one before it. An item already held is skipped (a refresh at
`open_session` can read a commit before its writer adds it). One process writes a given user's memory at a time
(sticky sessions per user, DESIGN.md); what another process committed earlier is read by `refresh`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from omni.memory.index import ItemIndex
from omni.memory.keys import unit_rows
from omni.memory.store import MemoryStore
from omni.memory.types import Event, LaneKeys, Note, NoteKind, Summary

TextEmbedder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class IndexConfig:
    # 50,000 events is about 290 h at 170 events/h (memory.md 5.1); at 8 x 256-dim keys, about 0.45 GB of RAM.
    max_events: int = 50_000
    demote_fraction: float = 0.1  # drop this share of the oldest events at once, so compaction is rare
    dedupe_cos: float = 0.95  # two notes this close are one note (MiniLM: paraphrases of one sentence, ~0.9-0.98)


_NO_KEY = np.zeros(0, dtype=np.float32)


def normalise_text(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def space_lane(space: str) -> str:
    """The index lane that holds text items' keys in text key space `space` (kept apart from feature lanes)."""
    return f"text:{space}"


class UserIndex:
    """The RAM side of one user's memory.

    `text_spaces` (name -> embed(texts) -> [n, D]): extra key spaces for text items, e.g. the omni engine's Thinker
    input space ("thinker"), so a question that has no text embedding (a spoken one) can still reach typed facts,
    dialogue turns and summaries. Each L3 note and L2 summary gets one unit key per space, held as a one-key lane
    `space_lane(name)` of its index and scored by `omni.memory.recall` like its text key. Events are not keyed: their
    text reaches L3 as turn notes (at roll-up, at the latest when the session closes), and events are the bulk of
    the index (at D = 3584, the 7B Thinker's width, a key is 14 KB; notes and summaries are a few hundred per hour of
    conversation). The keys live in RAM only: computed as the item enters the index (outside the lock), recomputed
    from the stored text on a reload, so the index after a restart is the same."""

    def __init__(
        self, user_id: str, config: IndexConfig | None = None, text_spaces: dict[str, TextEmbedder] | None = None
    ) -> None:
        self.user_id = user_id
        self.config = config or IndexConfig()
        self.text_spaces = dict(text_spaces or {})
        self.lock = threading.Lock()
        self.events = ItemIndex()
        self.summaries = ItemIndex()
        self.notes = ItemIndex()
        self.summary_texts: dict[int, Summary] = {}
        self.note_items: dict[int, Note] = {}
        self._note_by_text: dict[tuple[NoteKind, str], int] = {}
        self.last_event_id = 0
        self.last_summary_id = 0
        self.demoted_upto = 0  # events with id <= this are served from the store, not RAM
        # Summary lane keys are only searched for summaries over demoted events (recall._descend), so only those
        # are held: before any demotion (50,000 events, ~290 h) they would cost ~0.5 MB/h for nothing.
        self._keyed_summaries: set[int] = set()
        self._summary_keys_due = False

    @classmethod
    def load(
        cls, store: MemoryStore, user_id: str, config: IndexConfig | None = None,
        text_spaces: dict[str, TextEmbedder] | None = None,
    ) -> UserIndex:
        index = cls(user_id, config, text_spaces)
        index.refresh(store)
        return index

    def space_keys(self, texts: Sequence[str], t: Sequence[float]) -> list[dict[str, LaneKeys]]:
        """Per text, its one-key lane in every text space (empty dicts for empty texts or without spaces)."""
        out: list[dict[str, LaneKeys]] = [{} for _ in texts]
        todo = [i for i, x in enumerate(texts) if x.strip()]
        if not todo:
            return out
        for name, embed in self.text_spaces.items():
            keys = unit_rows(np.asarray(embed([texts[i] for i in todo]), dtype=np.float32))
            if keys.shape[0] != len(todo):
                raise ValueError(f"text space {name!r} gave {keys.shape[0]} keys for {len(todo)} texts")
            for i, k in zip(todo, keys, strict=True):
                out[i][space_lane(name)] = LaneKeys(k[None, :], np.array([t[i]], np.float64), k)
        return out

    def refresh(self, store: MemoryStore) -> None:
        """Add what other processes (or a previous run) committed since this index last looked."""
        events = store.load_events(self.user_id, after_id=self.last_event_id)
        summaries = store.load_summaries(self.user_id, after_id=self.last_summary_id)
        known = set(self.note_items)
        notes = [n for n in store.load_notes(self.user_id) if n.id not in known]
        s_space = self.space_keys([s.text for s in summaries], [s.t_start for s in summaries])
        n_space = self.space_keys([n.text for n in notes], [n.t_first for n in notes])
        with self.lock:
            for ev in events:
                self._add_event(ev)
            for s, extra in zip(summaries, s_space, strict=True):
                self._add_summary(s, extra)
            for n, extra in zip(notes, n_space, strict=True):
                self._add_note(n, extra)
        self.sync_summary_keys(store)

    def add_event(self, ev: Event) -> None:
        with self.lock:
            self._add_event(ev)

    def sync_summary_keys(self, store: MemoryStore) -> None:
        """After a demotion: load the lane keys of the level-1 summaries over the newly demoted events."""
        if not self._summary_keys_due:
            return
        with self.lock:
            held = self.summary_texts.values()
            due = [s.id for s in held if self._over_demoted(s) and s.id not in self._keyed_summaries]
            self._summary_keys_due = False
        for s in store.load_summaries(self.user_id, ids=due):
            with self.lock:
                self.summaries.add_lanes(s.id, s.lanes)
                self._keyed_summaries.add(s.id)

    def add_summary(self, s: Summary) -> None:
        extra = self.space_keys([s.text], [s.t_start])[0]
        with self.lock:
            self._add_summary(s, extra)

    def add_note(self, n: Note) -> None:
        extra = self.space_keys([n.text], [n.t_first])[0]
        with self.lock:
            self._add_note(n, extra)

    def find_duplicate(self, kind: NoteKind, text: str, key: np.ndarray) -> Note | None:
        """A held note of `kind` saying the same (same words, or text keys within `dedupe_cos`)."""
        with self.lock:
            nid = self._note_by_text.get((kind, normalise_text(text)))
            if nid is not None:
                return self.note_items[nid]
            if len(self.notes) == 0:
                return None
            scores = self.notes.text_scores(key)
            for pos in np.argsort(-scores)[:4]:
                note = self.note_items[int(self.notes.ids.view[pos])]
                if scores[pos] >= self.config.dedupe_cos and note.kind == kind:
                    return note
            return None

    def touch_note(self, note: Note, t: float) -> None:
        with self.lock:
            note.t_last = max(note.t_last, t)
            note.count += 1

    def nbytes(self) -> int:
        """RAM of the index: key matrices (allocated capacity) plus the texts held for summaries and notes."""
        texts = sum(sys.getsizeof(s.text) + 8 * len(s.children) + 200 for s in self.summary_texts.values())
        texts += sum(2 * sys.getsizeof(n.text) + 200 for n in self.note_items.values())  # + its de-duplication key
        return self.events.nbytes() + self.summaries.nbytes() + self.notes.nbytes() + texts

    def _add_event(self, ev: Event) -> None:
        if ev.id <= self.last_event_id:
            if ev.id <= self.demoted_upto or self.events.position(ev.id) >= 0:
                return  # held already (or demoted): added by a refresh that raced the writer
            raise ValueError(f"event {ev.id} arrives after event {self.last_event_id}: the index needs id order")
        self.events.add(ev.id, ev.t_start, ev.t_end, ev.text_key, ev.lanes, parent=ev.summary_id)
        self.last_event_id = ev.id
        if len(self.events) > self.config.max_events:
            k = max(1, int(self.config.max_events * self.config.demote_fraction))
            self.demoted_upto = int(self.events.ids.view[k - 1])
            self.events.drop_oldest(k)
            self._summary_keys_due = True

    def _add_summary(self, s: Summary, extra: dict[str, LaneKeys] | None = None) -> None:
        if s.id in self.summary_texts:
            return
        keyed = self._over_demoted(s)
        lanes = {**(s.lanes if keyed else {}), **(extra or {})}
        self.summaries.add(s.id, s.t_start, s.t_end, s.text_key, lanes, parent=s.parent_id)
        if keyed:
            self._keyed_summaries.add(s.id)
        self.summary_texts[s.id] = dataclasses.replace(s, lanes={}, text_key=_NO_KEY)  # keys live in the matrices
        self.last_summary_id = max(self.last_summary_id, s.id)
        children = self.events if s.level == 1 else self.summaries
        for child in s.children:
            children.set_parent(child, s.id)
            if s.level > 1 and child in self.summary_texts:
                self.summary_texts[child].parent_id = s.id

    def _over_demoted(self, s: Summary) -> bool:
        return s.level == 1 and bool(s.children) and max(s.children) <= self.demoted_upto

    def _add_note(self, n: Note, extra: dict[str, LaneKeys] | None = None) -> None:
        if n.id in self.note_items:
            return
        self.notes.add(n.id, n.t_first, n.t_last, n.text_key, extra)
        self.note_items[n.id] = dataclasses.replace(n, text_key=_NO_KEY)
        self._note_by_text[(n.kind, normalise_text(n.text))] = n.id
