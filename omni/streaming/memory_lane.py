"""The runtime's glue to `omni/memory/`: one `MemoryHub` per server process, one `MemoryLane` per engine session.

Who calls what (the engine session owns its lane, DESIGN.md "State"; the runtime only opens and closes it):

    hub = MemoryHub(Memory(MemoryStore.open(dir_or_url), embed=TextEmbedder()), embed)   # omni.app.serve
    lane = hub.open(user_id, session_id)          # omni.streaming.session, on the device worker
    engine_session.use_memory(lane)               # engines that have a memory (`UsesMemory`)
    # inside the engine session, on the device worker:
    slot = lane.slot(question)                    # end of turn (and at a pause): recall -> prompt slot text
    cache.watch(lane.slid)                        # the KV cache tells L0 before its window's start moves
    lane.user_turn(text, cache_position)          # the turn's words, as the LM got them (and where)
    lane.reply(text, cache_position) ... lane.heard(played)   # the reply, then what was heard after a barge-in
    lane.track_media(kind, tokens, t, cache_position)         # audio/video blocks fed (already in L1)
    recall = lane.take_recalled()                 # the runtime: -> `omni.memory.recalled`
    lane.close()                                  # session end, off the event loop (it flushes the writer)

L0: the session's `WorkingWindow` (omni.memory.window) holds each text and media item with the cache index where it
entered; the engine's `KVCache.watch` calls `slid(edge)` before each forward that moves the window's start, so the
items leaving go below first (text to L3 as dialogue turns; audio and video were written to L1 as they came), and
the engine's own cache never drops a token memory has not been told of. The engine stops the watch at its close.

Write path: every call above does bookkeeping only (the segmenter's, a deque) and hands records to the memory's
own writer thread (bounded at `MemoryConfig.write_queue_max`, 256 records; when full the caller waits and the wait
is counted, omni.memory.session), so no embedding or disk write runs inside a turn. The read path runs at the end of a
turn: one MiniLM embedding of the question (~17 ms on one thread) plus the ranking (p95 9 ms at a 3-hour session).

Times: seconds since the lane opened (the session's media clock starts within milliseconds of it); the memory adds
the session's start to put every session of a user on one axis.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from omni.memory import Memory, MemoryWriteError, Recall, SessionMemory, WindowItem
from omni.streaming.memory_summary import WorkerSummarizer
from omni.streaming.worker import DeviceWorker

log = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]

# The slot's first line. SmolLM2-135M answered "what is my locker code?" with a made-up number under a bare
# "Recalled memory:" header, and with the recalled digits under this one (3 wordings, 2 filler turns before).
SLOT_HEADER = "What the user told you earlier (use it to answer):"


@dataclass(frozen=True)
class LaneConfig:
    budget_tokens: int = 192  # the recalled-memory slot: ~6 recalled lines, a tenth of the embedded 2,044 window


@runtime_checkable
class UsesMemory(Protocol):
    """An engine session that reads and writes memory through a lane."""

    def use_memory(self, lane: MemoryLane) -> None: ...


class MemoryLane:
    """One session's memory handle plus what the engine needs around it. Call from one thread (the worker)."""

    def __init__(self, handle: SessionMemory, embed: Embed, config: LaneConfig | None = None) -> None:
        self.handle = handle
        self.embed = embed
        self.config = config or LaneConfig()
        self._t0 = time.monotonic()
        self._last: tuple[str, Recall] | None = None  # (question, its recall): a pause and the turn's end share it
        self._recalled: Recall | None = None
        self._reply: tuple[str, float, int] | None = None  # (text as heard so far, start time, cache position)
        self._said: tuple[str, float, float] | None = None  # the last reply given to memory: (text, t0, t1)
        self._reply_item: WindowItem | None = None  # the last reply as L0 holds it
        self.closed = False

    @property
    def user_id(self) -> str:
        return self.handle.user_id

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def slot(self, question: str) -> str:
        """The recalled-memory slot for `question` (empty when nothing scored above the memory's floor): the header,
        then the items in time order, one line each, "[2026-12-03 12:03:00, 5 min ago] fact: ..." as `Recall.text`
        has them. SmolLM2-135M reads such a line back at the start of its answer, stamp and label included, and that
        copy is most of its right answers: without the stamps it answered fewer (benchmarks/fact_recall.py,
        held-out window facts: the items' words under "5 minutes ago:" headings 3 of the first 7 right, with a
        trailing "(5 minutes ago)" 6 of 13, bare "- ..." lines 0 of 7, against 5 of 7 and 10 of 13 with stamps). So
        the stamps stay, and the reply drops what it echoes of them (`SlotEcho`)."""
        question = question.strip()
        if not question:
            return ""
        if self._last is None or self._last[0] != question:
            q = np.asarray(self.embed([question]), dtype=np.float32)[0]
            recall = self.handle.recall(q, question, self.config.budget_tokens)
            self._last = (question, recall)
        recall = self._last[1]
        kept = [it for it in recall.items if _user_side(it.text)]
        self._recalled = Recall(kept, sum(it.tokens for it in kept), recall.budget_tokens, recall.text,
                                recall.elapsed_ms)
        if not kept:
            return ""
        lines = dict(zip((id(it) for it in recall.items), _item_lines(recall), strict=True))
        return "\n".join([SLOT_HEADER, *(_user_lines(lines[id(it)]) for it in kept)])

    def add_frame(self, lane: str, t: float, tokens: np.ndarray) -> None:
        """Pooled encoder tokens [N, D] of one audio block or video frame at media time `t` (seconds since the
        session's media clock started), into the open L1 event."""
        self.handle.add_frame(lane, t, tokens)

    def recall(
        self, question: str, lanes: dict[str, np.ndarray], budget_tokens: int,
        count_tokens: Callable[[str], int] | None = None, before: float | None = None,
        text_spaces: dict[str, np.ndarray] | None = None,
    ) -> Recall:
        """Recall for engines that query feature lanes too (the omni engine): the question's text (embedded when
        not empty) and a query vector per lane; items come with their evidence frames of every queried lane.
        `text_spaces`: query vectors of the memory's text key spaces (the omni engine's "thinker").
        `before`: media time of the question's first input; an event of this session's time that reaches it (the
        question's own, when the segmenter cut it before the turn ended) is left out. Kept for `take_recalled`."""
        question = question.strip()
        q = np.asarray(self.embed([question]), dtype=np.float32)[0] if question else None
        recall = self.handle.recall(q, question, budget_tokens, lanes=lanes, count_tokens=count_tokens,
                                    text_spaces=text_spaces)
        if before is not None:
            edge = self.handle.started_at + before
            start = self.handle.started_at
            keep = [not (it.level == "L1" and it.t_end >= edge and it.t_start >= start) for it in recall.items]
            if not all(keep):
                header = recall.text.splitlines()[0]
                kept = [(it, line) for it, line, k in zip(recall.items, _item_lines(recall), keep, strict=True) if k]
                text = "\n".join([header, *(line for _, line in kept)]) if kept else ""
                recall = Recall([it for it, _ in kept], sum(it.tokens for it, _ in kept), budget_tokens, text,
                                recall.elapsed_ms)
        self._recalled = recall
        return recall

    def take_recalled(self) -> Recall | None:
        """The recall of the turn being answered, once (None when no recall ran since the last call)."""
        recall, self._recalled = self._recalled, None
        return recall

    def user_turn(self, text: str, cache_position: int) -> None:
        """The user's turn as the LM got it (spoken transcript and typed text) and the cache index where it starts;
        the last reply is final now."""
        self._commit_reply()
        self._last = None
        t = self.clock()
        text = text.strip()
        if text:
            self.handle.add_utterance("user", text, t, t)
            self._track("user", text, t, cache_position)
        self.handle.turn_boundary(t)

    def reply(self, text: str, cache_position: int) -> None:
        """The reply as generated, from cache index `cache_position` on; `heard` replaces it when a barge-in cut
        it. L0 holds it from now (a later turn's feed may push it out before the next `user_turn`)."""
        t = self.clock() if self._reply is None else self._reply[1]
        self._reply = (text, t, cache_position)
        self._reply_item = self._track("assistant", text.strip(), t, cache_position)  # (an empty one: nothing to write)

    def heard(self, text: str) -> None:
        """What of the last reply the listener heard (barge-in, `conversation.item.truncate`). After the reply was
        final (the user spoke again before the client's truncate came) the remembered reply is revised: in the
        open event, or in its written event, and in L0 while it is still held there."""
        if self._reply is not None:
            self.reply(text, self._reply[2])
            return
        said = self._said
        if said is None or text.strip() == said[0]:
            return
        self.handle.revise_utterance("assistant", said[0], said[1], said[2], text)
        self._said = (text.strip(), said[1], said[2])
        item = self._reply_item
        if item is not None and self.handle.revise_held(item, text):  # not rolled up yet: it goes to L3 as heard
            self._reply_item = WindowItem("text", self.handle.memory.count_tokens(text), item.t, text.strip(),
                                          "assistant", start=item.start)

    def track_media(self, kind: str, tokens: int, t: float, cache_position: int) -> None:
        """An audio block or video patch of `tokens` tokens fed at cache index `cache_position` (media time `t`),
        already given to L1 (`add_frame`): L0 holds it until the window passes it."""
        if kind not in ("audio", "video"):
            raise ValueError(f"a media item is audio or video, got {kind!r}")
        self.handle.track(WindowItem("audio" if kind == "audio" else "video", tokens, t, start=cache_position))

    def slid(self, edge: int) -> None:
        """The engine's KV window is about to start at cache index `edge` (`KVCache.watch`): what leaves L0 goes
        below first."""
        self.handle.slide(edge)

    def roll_up(self, cache_length: int, window: int, lookahead: int) -> None:
        """For an engine without `KVCache.watch`: write below each held item that the next `lookahead` tokens will
        push out of a `window`-token KV window holding `cache_length` tokens so far, before it goes."""
        self.slid(cache_length + lookahead - window)

    @property
    def held(self) -> list[WindowItem]:
        """What L0 holds now, in cache order."""
        return self.handle.window.held

    def close(self) -> None:
        """The last reply, the open event and the text still in the window go below; flushes the writer."""
        if self.closed:
            return
        self.closed = True
        self._commit_reply()
        try:
            self.handle.close(self.clock())
        except MemoryWriteError as e:  # the writer already warned; the session ends normally without them
            log.warning("memory of session %s was not fully persisted: %s (%s)", self.handle.session_id, e,
                        e.__cause__)

    def _commit_reply(self) -> None:
        if self._reply is None:
            return
        text, t0, _ = self._reply
        self._reply = None
        if text.strip():
            t1 = self.clock()
            self.handle.add_utterance("assistant", text, t0, t1)
            self._said = (text.strip(), t0, t1)

    def _track(self, role: str, text: str, t: float, cache_position: int) -> WindowItem:
        item = WindowItem("text", self.handle.memory.count_tokens(text), t, text, role, start=cache_position)
        self.handle.track(item)
        return item


class SlotEcho:
    """Drops the recalled slot's line markup that a small LM reads back at the start of a reply line: a stamp
    ("[2026-12-03 12:03:00, 5 min ago] ", or one the LM made up in that form) and a label ("fact: ", "user: ",
    "summary: "), so they are neither shown nor spoken. Streaming: text at a line's start is held while it could
    still be such markup (at most a stamp's length), everything else passes at once."""

    _MARK = re.compile(r"\[[^\]\n]{0,60}?\d[^\]\n]{0,60}\]\s*|(?:fact|user|summary): *")  # a stamp has digits
    _LABELS = ("fact:", "user:", "summary:")

    def __init__(self) -> None:
        self._held = ""
        self._line_start = True
        self.dropped = ""  # the markup dropped so far (diagnostics, tests)

    def push(self, delta: str) -> str:
        self._held += delta
        out = []
        while self._held:
            if not self._line_start:
                cut = self._held.find("\n")
                if cut < 0:
                    out.append(self._held)
                    self._held = ""
                    break
                out.append(self._held[: cut + 1])
                self._held = self._held[cut + 1 :]
                self._line_start = True
                continue
            m = self._MARK.match(self._held)
            if m is not None and m.end() < len(self._held):  # (a mark at the very end may still grow: "] " -> "]  ")
                self.dropped += m.group(0)
                self._held = self._held[m.end() :]
                continue
            if m is not None or self._may_start_mark(self._held):
                break  # hold: more text decides
            self._line_start = False
        return "".join(out)

    def flush(self) -> str:
        """The end of the reply: what is held, less a complete mark."""
        m = self._MARK.match(self._held)
        rest = self._held[m.end() :] if m is not None else self._held
        self._held, self._line_start = "", True
        return rest

    def _may_start_mark(self, s: str) -> bool:
        if s.startswith("["):
            return "]" not in s and "\n" not in s and len(s) <= 62
        return any(label.startswith(s) for label in self._LABELS)


def _item_lines(recall: Recall) -> list[str]:
    """The line of each item of `recall.text` (a header, then one "[time, ago] body" line per item: recall renders
    each item on one line, since a remembered reply can hold line breaks, omni.memory.recall._make_item)."""
    lines = recall.text.splitlines()[1:]
    if len(lines) != len(recall.items):
        raise ValueError(f"a recall of {len(recall.items)} items rendered {len(lines)} lines")
    return lines


def _user_side(body: str) -> bool:
    """Whether a recalled item has anything but the assistant's own words."""
    return any(not part.startswith("assistant: ") for part in body.split(" / "))


def _user_lines(line: str) -> str:
    """An item's text without the assistant's parts: the slot quotes the user, facts and summaries. SmolLM2-135M
    repeated its own earlier "I don't have a locker code associated with you yet" when that reply was recalled
    beside the user's "My locker code is 4719" (and answered with the digits once it was left out)."""
    return " / ".join(part for part in line.split(" / ") if not part.startswith("assistant: "))


class MemoryHub:
    """Process-wide: the memory and the question embedder; opens lanes. Users are scoped by `user_id`; None is an
    anonymous session, whose memory lasts the session only (MemoryConfig.persist_anonymous)."""

    def __init__(
        self, memory: Memory, embed: Embed, config: LaneConfig | None = None,
        summarizer: WorkerSummarizer | None = None,
    ) -> None:
        """`summarizer`: the memory's LM summarizer, when it runs on the server's device worker (attached at
        startup, `attach`)."""
        self.memory = memory
        self.embed = embed
        self.config = config or LaneConfig()
        self.open_failures = 0
        self.summarizer = summarizer

    def attach(self, worker: DeviceWorker, loop: asyncio.AbstractEventLoop) -> None:
        """The server's device worker and loop, for the summarizer's low-priority steps."""
        if self.summarizer is not None:
            self.summarizer.attach(worker, loop)

    def open(self, user_id: str | None, session_id: str) -> MemoryLane:
        if user_id is not None and not user_id.strip():
            raise ValueError("a user id must be a non-empty string (or None for an anonymous session)")
        handle = self.memory.open_session(user_id, session_id, started_at=time.time())
        return MemoryLane(handle, self.embed, self.config)

    def try_open(self, user_id: str | None, session_id: str) -> MemoryLane | None:
        """`open`, or None with a warning when the store cannot take the session (a full disk, a lost database):
        that session goes on without long-term memory (counted in `open_failures`)."""
        try:
            return self.open(user_id, session_id)
        except ValueError:
            raise
        except Exception as e:  # sqlite3, psycopg and OS errors alike: the store's failure is not the session's
            self.open_failures += 1
            log.warning("session %s runs without long-term memory: the store failed (%s: %s)", session_id,
                        type(e).__name__, e)
            return None

    def close(self) -> None:
        """Flush every queued record and stop the writer (server shutdown)."""
        self.memory.close()


def recalled_items(recall: Recall) -> list[dict[str, Any]]:
    """The items of `omni.memory.recalled`: text, time (epoch s of the item's start and end), level, score."""
    return [
        {"text": it.text, "t_start": it.t_start, "t_end": it.t_end, "level": it.level, "score": round(it.score, 4),
         "tokens": it.tokens, **({"frames": {k: len(v) for k, v in it.features.items()}} if it.features else {})}
        for it in recall.items
    ]
