from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from omni.streaming.worker import NOT_DONE, DeviceWorker, WorkerStopped, job_owner


async def test_jobs_run_in_order_on_the_worker_thread(worker: DeviceWorker) -> None:
    seen: list[tuple[int, str]] = []

    def job(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * i

    results = await asyncio.gather(*(worker.run(job, i) for i in range(20)))
    assert results == [i * i for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {worker.name} != {threading.current_thread().name}


async def test_exceptions_reach_the_caller(worker: DeviceWorker) -> None:
    def boom() -> None:
        raise KeyError("bad")

    with pytest.raises(KeyError):
        await worker.run(boom)
    assert await worker.run(lambda: 7) == 7  # the worker survives a failing job


async def test_cancelled_job_that_has_not_started_is_skipped(worker: DeviceWorker) -> None:
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.create_task(worker.run(gate.wait, 10))
    await asyncio.sleep(0.05)
    skipped = asyncio.create_task(worker.run(ran.append, "skipped"))
    await asyncio.sleep(0.01)
    skipped.cancel()
    gate.set()
    await blocker
    assert await worker.run(ran.append, "after") is None
    assert ran == ["after"]


async def test_stopped_worker_refuses_jobs() -> None:
    w = DeviceWorker()
    w.start()
    w.stop()
    with pytest.raises(WorkerStopped):
        await w.run(lambda: 1)


class ChunkBatcher:
    """Items are [name, chunks left]; one chunk each per batch; logs the names of every batch."""

    max_batch = 3

    def __init__(self, order: list[object]) -> None:
        self.order = order

    def run_batch(self, items: list[Any]) -> list[Any]:
        self.order.append([name for name, _ in items])
        out: list[Any] = []
        for item in items:
            item[1] -= 1
            if item[0] == "bad":
                out.append(KeyError("bad item"))
            else:
                out.append(NOT_DONE if item[1] else item[0])
        return out


async def test_batched_jobs_run_together_and_unfinished_ones_wait_their_turn(worker: DeviceWorker) -> None:
    gate = threading.Event()
    order: list[object] = []
    batcher = ChunkBatcher(order)
    tasks = [as_owner("a", worker.run, gate.wait, 10)]
    await asyncio.sleep(0.05)  # the worker is busy with a's first job: the next ones queue up
    batched = worker.run_batched
    tasks += [as_owner("a", batched, batcher, ["a", 3]), as_owner("b", batched, batcher, ["b", 1]),
              as_owner("c", worker.run, order.append, "c"), as_owner("d", batched, batcher, ["bad", 1]),
              as_owner("e", batched, batcher, ["e", 1])]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[1:3] == ["a", "b"] and isinstance(results[4], KeyError) and results[5] == "e"
    # a, b and d (max_batch 3) in one batch; c's plain job and e's batch go before a's second chunk
    assert order == [["a", "b", "bad"], "c", ["e", "a"], ["a"]]


def as_owner(owner: str, fn: Any, *args: Any) -> asyncio.Task[Any]:
    ctx = contextvars.copy_context()
    ctx.run(job_owner.set, owner)
    return asyncio.get_running_loop().create_task(fn(*args), context=ctx)
