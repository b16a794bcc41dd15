from __future__ import annotations

import asyncio

import pytest

from omni.streaming.queues import BoundedQueue, Inbox, Overflow, QueueClosed


async def test_drop_oldest_counts_every_drop() -> None:
    q: BoundedQueue[int] = BoundedQueue(3, Overflow.DROP_OLDEST, "audio")
    for i in range(5):
        q.put_nowait(i)
    assert q.dropped == 2
    assert q.drain() == [2, 3, 4]


async def test_keep_latest_replaces_the_waiting_frame() -> None:
    q: BoundedQueue[str] = BoundedQueue(1, Overflow.KEEP_LATEST, "video")
    q.put_nowait("a")
    q.put_nowait("b")
    assert await q.get() == "b"
    assert q.dropped == 1
    with pytest.raises(ValueError):
        BoundedQueue(2, Overflow.KEEP_LATEST)


async def test_block_makes_the_producer_wait_for_room() -> None:
    q: BoundedQueue[int] = BoundedQueue(1, Overflow.BLOCK, "out")
    await q.put(1)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(2)
    producer = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.01)
    assert not producer.done()
    assert await q.get() == 1
    await asyncio.wait_for(producer, 5)
    assert q.drain() == [2] and q.dropped == 0


async def test_flush_and_close() -> None:
    q: BoundedQueue[int] = BoundedQueue(4, Overflow.BLOCK, "out")
    q.put_nowait(1)
    q.put_nowait(2)
    assert q.flush() == 2 and len(q) == 0 and q.flushed == 2
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, 5)
    with pytest.raises(QueueClosed):
        q.put_nowait(3)


async def test_inbox_serves_control_frames_first() -> None:
    inbox: Inbox[str] = Inbox(BoundedQueue(8, Overflow.DROP_OLDEST, "in"), control_size=2)
    inbox.put_media("m1")
    inbox.put_media("m2")
    inbox.put_control("c1")
    assert [await inbox.get() for _ in range(3)] == ["c1", "m1", "m2"]
    inbox.put_control("c2")
    inbox.put_control("c3")
    with pytest.raises(asyncio.QueueFull):  # a stuck consumer surfaces instead of growing a queue
        inbox.put_control("c4")
