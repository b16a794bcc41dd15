from __future__ import annotations

import asyncio
import threading

import pytest

from streaming.worker import DeviceWorker, WorkerStopped


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
