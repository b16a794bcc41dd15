"""The API engines use: one `Memory` per server process, one `SessionMemory` handle per session.

Write path (never waits for a model or the disk, except under the back-pressure below):
- `add_frame(lane, t, tokens)`: pooled encoder tokens of an audio block or video frame, on the media/worker lane;
  the segmenter's bookkeeping runs inline (one mean and one dot product), closed events go to the writer queue.
- `add_utterance(role, text, t0, t1)` for the user's final transcript and the assistant's reply (as heard),
  `turn_boundary(t)` at the VAD's end of a turn, `admit(WindowItem)` for what enters the engine's cache (returns
  what to evict, after queueing evicted text for L3; an engine with its own eviction reports it with `evicted`, or,
  when its cache evicts by position, `track(item)` for each item with its cache index and `slide(edge)` before the
  window's start moves: the items that leave have their text queued for L3 first, omni.memory.window),
  `add_fact(text, t)` for an explicit user fact.
- A writer thread embeds transcripts (the injected `embed`), commits to the store and updates the RAM index.
  Queue policy: bounded (`write_queue_max`, 256 records: at one event per 3 s that is over 12 min of backlog);
  when full the caller waits for room, counted in `stats.write_stalls` and logged, rather than drop a record
  that is about to leave L0 (nothing leaves L0 without being written below).
- The consolidator (omni.memory.consolidator) writes L2 summaries at low priority when a summarizer is given.
Read path: `recall(question_embedding, question_text, budget_tokens, now)` (see omni.memory.recall).

Times given to a SessionMemory are seconds on the session's media clock (0 at session start); the handle adds the
session's start (epoch seconds) before storing, so a user's sessions share one time axis.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from omni.memory.consolidator import Consolidator, ConsolidatorConfig, Summarizer, TextEmbedder
from omni.memory.keys import unit_rows
from omni.memory.recall import RecallConfig, RecallQuery, TokenCounter, approx_tokens, run_recall
from omni.memory.segmenter import ClosedEvent, EventSegmenter, SegmenterConfig
from omni.memory.store import MemoryStore
from omni.memory.types import Note, NoteKind, Recall, RecallItem, Role, Utterance
from omni.memory.user_index import IndexConfig, UserIndex
from omni.memory.window import WindowConfig, WindowItem, WorkingWindow

log = logging.getLogger(__name__)

# First-person statements worth keeping as facts of the user ("my locker code is 4719", "I'm allergic to nuts",
# "I was born in Lisbon", "we live in Porto", "our wifi password is ...", "call me Sam", "remember that ..."): the
# user's or the household's possessives, and "I"/"we" with a form of be or have (present or past, contracted or
# not) or a verb of where one lives, works or comes from. A cheap rule, no model; the LM can add facts through
# add_fact. A question is never a fact (see `is_fact_statement`).
_FACT = re.compile(
    r"\b(?:my|our|call me|remember|i['’]m|i['’]ve|we['’]re|we['’]ve"
    r"|(?:i|we) (?:am|are|was|were|have|had|live|lived|work|worked|grew up|come from|came from))\b",
    re.IGNORECASE)


def is_fact_statement(text: str) -> bool:
    """Whether a user's utterance is kept as a fact: a first-person statement (`_FACT`), not a question ("what is
    my code?", "where was I born?")."""
    text = text.strip()
    return bool(text) and not text.endswith("?") and _FACT.search(text) is not None


class MemoryWriteError(RuntimeError):
    """The writer thread failed to persist records; raised by `Memory.flush` with the first failure as cause."""


@dataclass(frozen=True)
class MemoryConfig:
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    consolidator: ConsolidatorConfig = field(default_factory=ConsolidatorConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    write_queue_max: int = 256
    persist_anonymous: bool = False  # anonymous sessions keep session-only memory, forgotten at close


@dataclass
class MemoryStats:
    events: int = 0
    notes: int = 0
    write_stalls: int = 0
    write_errors: int = 0
    write_seconds: float = 0.0  # writer thread time: embedding, commit, index update


@dataclass(frozen=True)
class _NoteJob:
    user_id: str
    session_id: str
    kind: NoteKind
    text: str
    t: float


@dataclass(frozen=True)
class _ReviseJob:
    user_id: str
    session_id: str
    old: Utterance
    text: str


class Memory:
    """Process-wide: the store, the per-user RAM indexes, the writer thread and the consolidator."""

    def __init__(
        self, store: MemoryStore, embed: TextEmbedder, config: MemoryConfig | None = None,
        summarize: Summarizer | None = None, count_tokens: TokenCounter = approx_tokens,
        text_spaces: dict[str, TextEmbedder] | None = None,
    ) -> None:
        """`text_spaces`: extra key spaces of text items, name -> embed(texts) -> [n, D] (omni.memory.user_index; the
        omni engine's "thinker"), run on the writer thread (and at a user's index load) like `embed`."""
        self.store = store
        self.embed = embed
        self.text_spaces = dict(text_spaces or {})
        self.config = config or MemoryConfig()
        self.count_tokens = count_tokens
        self.stats = MemoryStats()
        self._users: dict[str, UserIndex] = {}
        self._users_lock = threading.Lock()
        self._queue: queue.Queue[ClosedEvent | _NoteJob | _ReviseJob | None] = queue.Queue(
            self.config.write_queue_max)
        self._error: BaseException | None = None
        self._last_stall_log = -1e9
        self._writer = threading.Thread(target=self._write_loop, name="memory-writer", daemon=True)
        self._writer.start()
        self.consolidator: Consolidator | None = None
        if summarize is not None:
            self.consolidator = Consolidator(store, self.user_index, summarize, embed, self.config.consolidator)
            self.consolidator.start()

    def user_index(self, user_id: str) -> UserIndex:
        with self._users_lock:
            index = self._users.get(user_id)
            if index is None:
                index = UserIndex.load(self.store, user_id, self.config.index, self.text_spaces)
                self._users[user_id] = index
            return index

    def open_session(self, user_id: str | None, session_id: str, started_at: float | None = None) -> SessionMemory:
        """A handle for one session. `user_id=None` is an anonymous session (see `persist_anonymous`)."""
        anonymous = user_id is None
        uid = f"anon:{session_id}" if user_id is None else user_id
        if not uid or not session_id:
            raise ValueError(f"open_session needs a non-empty user id and session id, got {user_id!r}, {session_id!r}")
        started = time.time() if started_at is None else started_at
        self.store.begin_session(uid, session_id, started)
        index = self.user_index(uid)
        index.refresh(self.store)
        if self.consolidator is not None:
            for old in self.store.sessions_with_unsummarised(uid):
                if old != session_id:
                    self.consolidator.request(uid, old, final=True)  # left over by a crash or a stop
        return SessionMemory(self, index, session_id, started, anonymous)

    def forget(self, user_id: str) -> int:
        """Remove every row and shard of `user_id` and its RAM index; returns the rows removed."""
        self.flush()
        with self._users_lock:
            self._users.pop(user_id, None)
        return self.store.forget(user_id)

    def submit(self, record: ClosedEvent | _NoteJob | _ReviseJob) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.stats.write_stalls += 1
            if time.monotonic() - self._last_stall_log > 60.0:  # once a minute, not once per frame
                self._last_stall_log = time.monotonic()
                log.warning("memory writer queue full (%d records): ingest waits for the writer (%d waits so far)",
                            self.config.write_queue_max, self.stats.write_stalls)
            self._queue.put(record)

    def flush(self, timeout: float = 30.0, consolidated: bool = True) -> None:
        """Wait until every queued record is committed (and, with a summarizer and `consolidated`, summarised: an LM
        summary waits for the device worker to be idle, so a session's close does not wait for it)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"memory writer still has {self._queue.unfinished_tasks} records after {timeout} s")
            time.sleep(0.005)
        if (consolidated and self.consolidator is not None
                and not self.consolidator.wait_idle(max(0.0, deadline - time.monotonic()))):
            raise TimeoutError(f"memory consolidation still busy after {timeout} s")
        if self._error is not None:
            err, self._error = self._error, None
            raise MemoryWriteError(f"memory writer failed ({self.stats.write_errors} records lost)") from err

    def close(self) -> None:
        """Flush, then stop the writer and the consolidator (also when the flush raises)."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._writer.join()
            if self.consolidator is not None:
                self.consolidator.stop()

    def _write_loop(self) -> None:
        while True:
            record = self._queue.get()
            t0 = time.perf_counter()
            try:
                if record is None:
                    return
                if isinstance(record, ClosedEvent):
                    self._write_event(record)
                elif isinstance(record, _ReviseJob):
                    self._write_revision(record)
                else:
                    self._write_note(record)
                self.stats.write_seconds += time.perf_counter() - t0
            except Exception as e:
                self.stats.write_errors += 1
                if self._error is None:  # once per failure streak (a full disk fails every record): no log flood
                    log.warning("memory writer cannot persist records (%s: %s): memory of the sessions open now may "
                                "be lost, the sessions go on; later failures are only counted until flush",
                                type(e).__name__, e, exc_info=not isinstance(e, OSError))
                self._error = self._error or e
            finally:
                self._queue.task_done()

    def _write_event(self, closed: ClosedEvent) -> None:
        ev = closed.event
        if ev.utterances:
            ev.text_key = unit_rows(np.asarray(self.embed([ev.transcript()]), dtype=np.float32))[0]
        index = self.user_index(ev.user_id)
        index.add_event(self.store.commit_event(closed))
        index.sync_summary_keys(self.store)
        self.stats.events += 1
        if self.consolidator is not None:
            self.consolidator.request(ev.user_id, ev.session_id)

    def _write_revision(self, job: _ReviseJob) -> None:
        def key_of(text: str) -> np.ndarray:
            return unit_rows(np.asarray(self.embed([text]), dtype=np.float32))[0]

        ev = self.store.revise_utterance(job.user_id, job.session_id, job.old, job.text, key_of)
        if ev is None:
            log.warning("memory: no event of session %s holds the %s utterance to revise", job.session_id, job.old.role)
            return
        index = self.user_index(job.user_id)
        with index.lock:
            if ev.text_key is not None and index.events.position(ev.id) >= 0:
                index.events.set_text_key(ev.id, ev.text_key)

    def _write_note(self, job: _NoteJob) -> None:
        key = unit_rows(np.asarray(self.embed([job.text]), dtype=np.float32))[0]
        index = self.user_index(job.user_id)
        dup = index.find_duplicate(job.kind, job.text, key)
        if dup is not None:
            index.touch_note(dup, job.t)
            self.store.touch_note(dup.id, dup.t_last, dup.count)
            return
        note = Note(user_id=job.user_id, kind=job.kind, text=job.text, text_key=key, t_first=job.t, t_last=job.t,
                    session_id=job.session_id)
        index.add_note(self.store.insert_note(note))
        self.stats.notes += 1


class SessionMemory:
    """One session's handle: its segmenter, its L0 window, its last recall. Call from one thread at a time."""

    def __init__(self, memory: Memory, index: UserIndex, session_id: str, started_at: float, anonymous: bool) -> None:
        self.memory = memory
        self.index = index
        self.user_id = index.user_id
        self.session_id = session_id
        self.started_at = started_at
        self.anonymous = anonymous
        self.segmenter = EventSegmenter(self.user_id, session_id, memory.config.segmenter)
        self.window = WorkingWindow(memory.config.window)
        self.last_recall: list[RecallItem] = []
        self._closed = False

    def add_frame(self, lane: str, t: float, tokens: np.ndarray) -> None:
        """Pooled encoder tokens [N, D] (or one vector [D]) of one audio block or video frame at media time `t`."""
        self._submit(self.segmenter.add_frame(lane, self.started_at + t, tokens))

    def add_utterance(self, role: Role, text: str, t_start: float, t_end: float) -> None:
        """A final transcript (user) or the reply as heard (assistant); first-person user statements become facts."""
        text = text.strip()
        if not text:
            return
        u = Utterance(role=role, text=text, t_start=self.started_at + t_start, t_end=self.started_at + t_end)
        self._submit(self.segmenter.add_utterance(u))
        if role == "user" and is_fact_statement(text):
            self.add_fact(text, t_end)

    def revise_utterance(self, role: Role, text: str, t_start: float, t_end: float, heard: str) -> None:
        """An utterance given before (`role`, `text`, media times) now says `heard` (a reply the listener cut after
        it was final): changed in the open event, or in its written event by the writer (text key included)."""
        old = Utterance(role=role, text=text.strip(), t_start=self.started_at + t_start, t_end=self.started_at + t_end)
        heard = heard.strip()
        if heard == old.text or self.segmenter.revise(old, heard):
            return
        self.memory.submit(_ReviseJob(self.user_id, self.session_id, old, heard))

    def turn_boundary(self, t: float) -> None:
        self._submit(self.segmenter.turn_boundary(self.started_at + t))

    def add_fact(self, text: str, t: float) -> None:
        self.memory.submit(_NoteJob(self.user_id, self.session_id, "fact", text.strip(), self.started_at + t))

    def admit(self, item: WindowItem) -> list[WindowItem]:
        """Record `item` entering the engine's cache; returns what the engine must evict now (text already queued
        for L3 as dialogue turns)."""
        evicted = self.window.admit(item)
        for old in evicted:
            self._roll_up(old)
        return evicted

    def track(self, item: WindowItem) -> None:
        """`item` entered the engine's position-evicting cache at index `item.start` (omni.memory.window)."""
        for old in self.window.track(item):
            self._roll_up(old)

    def revise_held(self, old: WindowItem, text: str) -> bool:
        """A tracked text item, still in the window, now says `text` (False when it left already)."""
        return self.window.revise(old, text.strip(), self.memory.count_tokens(text))

    def slide(self, edge: int) -> list[WindowItem]:
        """The engine's cache window is about to start at index `edge`: the tracked items below it leave now, their
        text queued for L3 first. Returns them."""
        gone = self.window.slide(edge)
        for item in gone:
            self._roll_up(item)
        return gone

    def evicted(self, items: Sequence[WindowItem]) -> None:
        """For engines whose cache evicts by its own policy: these items left it; their text goes to L3."""
        for item in items:
            self._roll_up(item)

    def recall(
        self, question_embedding: np.ndarray | None, question_text: str, budget_tokens: int, now: float | None = None,
        lanes: dict[str, np.ndarray] | None = None, evidence_lanes: Sequence[str] = (),
        count_tokens: TokenCounter | None = None, text_spaces: dict[str, np.ndarray] | None = None,
    ) -> Recall:
        """Rank this user's memory against the question and pack the best into `budget_tokens` (see omni.memory.recall).
        `now` is epoch seconds (default: the wall clock); `lanes` holds feature-lane query vectors; `text_spaces`
        query vectors of the text key spaces (`Memory(text_spaces=...)`); `count_tokens` the engine's own count of a
        text line (default: the memory's)."""
        query = RecallQuery(text_key=question_embedding, text=question_text, lanes=dict(lanes or {}),
                            evidence_lanes=tuple(evidence_lanes), text_spaces=dict(text_spaces or {}))
        result = run_recall(self.index, self.memory.store, query, budget_tokens, time.time() if now is None else now,
                            self.memory.config.recall, count_tokens or self.memory.count_tokens, self.last_recall)
        self.last_recall = result.items
        return result

    def close(self, t: float | None = None) -> None:
        """End of session: the open event is closed and written, the text window rolled into L3."""
        if self._closed:
            return
        self._closed = True
        self._submit(self.segmenter.close())
        for item in [*self.window.drain_text(), *self.window.drain_held()]:
            self._roll_up(item)
        end = self.started_at + t if t is not None else time.time()
        self.memory.flush(consolidated=False)
        self.memory.store.end_session(self.session_id, end)
        if self.memory.consolidator is not None:
            self.memory.consolidator.request(self.user_id, self.session_id, final=True)
        if self.anonymous and not self.memory.config.persist_anonymous:
            self.memory.forget(self.user_id)

    def _roll_up(self, item: WindowItem) -> None:
        if item.kind == "text" and item.text.strip():
            text = f"{item.role}: {item.text.strip()}" if item.role else item.text.strip()
            self.memory.submit(_NoteJob(self.user_id, self.session_id, "turn", text, self.started_at + item.t))

    def _submit(self, closed: list[ClosedEvent]) -> None:
        for c in closed:
            self.memory.submit(c)

