"""L0, the working window: what the Thinker's bounded cache holds, which items leave it first, and where the
recalled-memory slot sits in the prompt's positions.

Layout (memory.md 5.2 step 4 and 5.3): [sinks][recalled-memory slot][text window][audio/video window][question],
positions contiguous from 0, so the largest position is sinks + slot + windows + question, fixed by the config and
checked against the model's trained range once, at construction. Eviction: audio and video first, oldest first,
until the audio/video window fits (StreamingVLM keeps 16 s of vision); then the oldest text until the text window
fits. Sinks never leave. Evicted text is handed back so the caller writes it to L3 before dropping it
(`SessionMemory.admit` does both): nothing leaves L0 without being written below.

The engines' caches (omni/model/lm/kv_cache.py: sinks + a ring of `window` token indexes) evict by position, oldest
first, whatever the item; there the window holds each item with the cache index where it entered (`track`), and
the cache tells it, before the forward that moves the window's start past index `edge` (`KVCache.watch`), which
items leave (`slide`): every item that starts below `edge`, whole, although its tail may still be in view for a
while (so it is written before any token of it is gone). The text of those goes to L3 (`SessionMemory.slide`);
audio and video blocks were written to L1 when they entered. Held items are capped (`held_max`): past it the
oldest leaves early, written below as on eviction, so a cache that never tells its window cannot grow it.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

WindowKind = Literal["sink", "text", "audio", "video"]


@dataclass(frozen=True)
class WindowConfig:
    sink_tokens: int = 256  # system prompt + persona (StreamingVLM keeps 256-512)
    recall_tokens: int = 1024  # the recalled-memory slot, replaced each turn
    text_tokens: int = 2048  # recent dialogue
    av_tokens: int = 1024  # about 16 s at 64 vision tokens/s (2 fps x 32) or 25 audio tokens/s plus vision
    question_tokens: int = 256
    max_positions: int = 32768  # the model's trained context
    held_max: int = 8192  # items held by cache index (`track`); an engine's window of 8K tokens holds fewer

    def __post_init__(self) -> None:
        total = self.sink_tokens + self.recall_tokens + self.text_tokens + self.av_tokens + self.question_tokens
        if min(self.sink_tokens, self.recall_tokens, self.text_tokens, self.av_tokens, self.question_tokens) < 0 \
                or self.held_max < 1:
            raise ValueError(f"window budgets must be >= 0, got {self}")
        if total > self.max_positions:
            raise ValueError(
                f"L0 layout needs {total} positions (sinks {self.sink_tokens} + slot {self.recall_tokens} + text "
                f"{self.text_tokens} + audio/video {self.av_tokens} + question {self.question_tokens}), more than the "
                f"model's trained range of {self.max_positions}"
            )


@dataclass(frozen=True)
class SlotLayout:
    """Half-open position ranges of the prompt's regions."""

    sinks: tuple[int, int]
    recall: tuple[int, int]
    text: tuple[int, int]
    av: tuple[int, int]
    question: tuple[int, int]


@dataclass(frozen=True)
class WindowItem:
    """Something the engine put into its cache: a sink, a piece of dialogue text, or an audio/video block."""

    kind: WindowKind
    tokens: int
    t: float  # media time (s) of the item, for eviction order and for the L3 note
    text: str = ""
    role: str = ""
    handle: int = 0  # the engine's own reference (e.g. its cache segment), returned on eviction
    start: int = -1  # the cache's token index where the item entered (`WorkingWindow.track`); -1: not tracked


class WorkingWindow:
    """Per-session L0 bookkeeping. Not thread-safe: one session's engine calls it from one thread."""

    def __init__(self, config: WindowConfig | None = None) -> None:
        self.config = config or WindowConfig()
        self._sinks = 0
        self._text: deque[WindowItem] = deque()
        self._av: deque[WindowItem] = deque()
        self._text_tokens = 0
        self._av_tokens = 0
        self._held: list[WindowItem] = []  # tracked by cache index, in index order
        self.left = 0  # tracked items that left (slid out, capped out, or drained)

    def layout(self) -> SlotLayout:
        c = self.config
        a = c.sink_tokens
        b = a + c.recall_tokens
        d = b + c.text_tokens
        e = d + c.av_tokens
        return SlotLayout(sinks=(0, a), recall=(a, b), text=(b, d), av=(d, e), question=(e, e + c.question_tokens))

    @property
    def text_items(self) -> list[WindowItem]:
        return list(self._text)

    @property
    def av_items(self) -> list[WindowItem]:
        return list(self._av)

    def admit(self, item: WindowItem) -> list[WindowItem]:
        """Add `item`; return what must leave the cache now, oldest first (audio/video before text)."""
        if item.tokens < 0:
            raise ValueError(f"window item has {item.tokens} tokens")
        if item.kind == "sink":
            if self._sinks + item.tokens > self.config.sink_tokens:
                raise ValueError(
                    f"sinks would hold {self._sinks + item.tokens} tokens, "
                    f"the layout reserves {self.config.sink_tokens}"
                )
            self._sinks += item.tokens
            return []
        limit = self.config.text_tokens if item.kind == "text" else self.config.av_tokens
        if item.tokens > limit:
            raise ValueError(f"a {item.kind} item of {item.tokens} tokens cannot fit its window of {limit}")
        if item.kind == "text":
            self._text.append(item)
            self._text_tokens += item.tokens
        else:
            self._av.append(item)
            self._av_tokens += item.tokens
        evicted: list[WindowItem] = []
        while self._av_tokens > self.config.av_tokens:
            old = self._av.popleft()
            self._av_tokens -= old.tokens
            evicted.append(old)
        while self._text_tokens > self.config.text_tokens:
            old = self._text.popleft()
            self._text_tokens -= old.tokens
            evicted.append(old)
        return evicted

    def drain_text(self) -> list[WindowItem]:
        """Everything of the text window, emptied (at session end the text leaves L0 too)."""
        out = list(self._text)
        self._text.clear()
        self._text_tokens = 0
        return out

    # ---- items held by cache index, for a cache that evicts by position (module docstring) ------------------

    @property
    def held(self) -> list[WindowItem]:
        return list(self._held)

    def track(self, item: WindowItem) -> list[WindowItem]:
        """`item` entered the cache at index `item.start`; an item tracked again at the same start and kind
        and role replaces the one held (a reply re-given as heard). Returns what leaves early under `held_max`."""
        if item.start < 0 or item.tokens < 0:
            raise ValueError(f"a tracked window item needs a cache index >= 0 and tokens >= 0, got {item}")
        if item.kind == "sink":
            return []
        at = bisect.bisect_left(self._held, item.start, key=lambda it: it.start)
        while at < len(self._held) and self._held[at].start == item.start:
            if (self._held[at].kind, self._held[at].role) == (item.kind, item.role):
                self._held[at] = item
                return []
            at += 1
        self._held.insert(at, item)
        if len(self._held) <= self.config.held_max:
            return []
        out, self._held = self._held[:1], self._held[1:]
        self.left += 1
        return out

    def revise(self, old: WindowItem, text: str, tokens: int) -> bool:
        """A held text item now says `text` (a reply cut by a barge-in after it was tracked): False if not held."""
        for k, it in enumerate(self._held):
            if it == old:
                self._held[k] = replace(it, text=text, tokens=tokens)
                return True
        return False

    def slide(self, edge: int) -> list[WindowItem]:
        """The cache's window now starts at index `edge`: the held items starting below it leave, oldest first."""
        k = bisect.bisect_left(self._held, edge, key=lambda it: it.start)
        out, self._held = self._held[:k], self._held[k:]
        self.left += len(out)
        return out

    def drain_held(self) -> list[WindowItem]:
        """Every held item, emptied (session end)."""
        out, self._held = self._held, []
        self.left += len(out)
        return out
