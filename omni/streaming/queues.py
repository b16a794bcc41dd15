"""Bounded queues, each with a written overflow policy.

- input audio: `DROP_OLDEST`. When full, the oldest frame goes and is counted (`dropped`, reported in the
  metrics and logged): the producer is a network track that cannot wait, and old audio is worth less than new
  audio, but a drop is never silent.
- video: `KEEP_LATEST` (size 1). A new frame replaces the waiting one: the model samples video at a low rate
  and only the newest frame matters.
- output audio: `BLOCK`. The producer (generation) waits for room: generation runs ahead of playback, and
  waiting throttles it instead of losing speech. Flushed on barge-in.
- control: the `Inbox` front lane, served before any media frame; bounded, and `put` raises when full:
  control frames are rare, so a full lane means a stuck consumer, which must surface.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Overflow(enum.Enum):
    DROP_OLDEST = "drop_oldest"
    KEEP_LATEST = "keep_latest"
    BLOCK = "block"


class QueueClosed(Exception):
    """The queue was closed: its consumer or producer is shutting down."""


class BoundedQueue(Generic[T]):
    """An asyncio queue with a size bound and an explicit overflow policy (event-loop only, not thread-safe)."""

    def __init__(self, maxsize: int, policy: Overflow, name: str = "") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if policy is Overflow.KEEP_LATEST and maxsize != 1:
            raise ValueError("KEEP_LATEST keeps exactly one item: maxsize must be 1")
        self.maxsize = maxsize
        self.policy = policy
        self.name = name
        self.dropped = 0  # items lost to the overflow policy (DROP_OLDEST, KEEP_LATEST)
        self.flushed = 0  # items removed by flush()
        self._items: deque[T] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, item: T) -> None:
        """Add without waiting; a full queue applies its policy (BLOCK raises `asyncio.QueueFull`)."""
        if self._closed:
            raise QueueClosed(self.name)
        if len(self._items) >= self.maxsize:
            if self.policy is Overflow.BLOCK:
                raise asyncio.QueueFull(self.name)
            self._items.popleft()
            self.dropped += 1
            if self.policy is Overflow.DROP_OLDEST and (self.dropped & (self.dropped - 1)) == 0:
                # log at 1, 2, 4, 8 ... drops: visible without flooding the log
                log.warning("queue %s full (%d): dropped %d frames so far", self.name, self.maxsize, self.dropped)
        self._items.append(item)
        self._readable.set()
        if len(self._items) >= self.maxsize:
            self._writable.clear()

    async def put(self, item: T) -> None:
        """Add, waiting for room under BLOCK; other policies never wait."""
        while self.policy is Overflow.BLOCK and len(self._items) >= self.maxsize:
            if self._closed:
                raise QueueClosed(self.name)
            self._writable.clear()
            await self._writable.wait()
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty(self.name)
        item = self._items.popleft()
        if not self._items:
            self._readable.clear()
        self._writable.set()
        return item

    async def get(self) -> T:
        while not self._items:
            if self._closed:
                raise QueueClosed(self.name)
            await self._readable.wait()
        return self.get_nowait()

    def drain(self) -> list[T]:
        """Everything waiting, in order (the consumer batches it)."""
        items = list(self._items)
        self._items.clear()
        self._readable.clear()
        self._writable.set()
        return items

    def flush(self) -> int:
        """Discard everything waiting (barge-in); returns how many items went."""
        n = len(self._items)
        self.flushed += n
        self.drain()
        return n

    def close(self) -> None:
        """Wake every waiter; later puts raise and gets raise once the queue is empty."""
        self._closed = True
        self._readable.set()
        self._writable.set()


class Inbox(Generic[T]):
    """A session's frame inbox: a bounded control lane served before a bounded media lane."""

    def __init__(self, media: BoundedQueue[T], control_size: int = 64) -> None:
        self.media = media
        self.control: BoundedQueue[T] = BoundedQueue(control_size, Overflow.BLOCK, name=f"{media.name}.control")
        self._wake = asyncio.Event()

    def put_control(self, frame: T) -> None:
        self.control.put_nowait(frame)  # a full control lane raises: a stuck consumer must surface
        self._wake.set()

    def put_media(self, frame: T) -> None:
        self.media.put_nowait(frame)
        self._wake.set()

    async def get(self) -> T:
        """The next control frame if any, else the next media frame."""
        while True:
            if len(self.control):
                return self.control.get_nowait()
            if len(self.media):
                return self.media.get_nowait()
            if self.media.closed:
                raise QueueClosed(self.media.name)
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        self.media.close()
        self.control.close()
        self._wake.set()
