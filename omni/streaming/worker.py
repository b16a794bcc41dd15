"""Worker threads: the device worker runs the model steps of every session; a second instance, the media
worker, runs their VAD, resampling and image work, so that input is never queued behind a model step.

The event loop never does this work itself; sessions `await worker.run(fn, ...)`. Jobs run on a single thread,
taken round-robin between owners (`job_owner`, set per session task) and in submission order within one owner,
so the steps of many sessions interleave (a reply is advanced one `next()` per job), a session with many jobs
queued cannot make another wait behind all of them, and the calls into one engine session never overlap (only
the device worker calls engine sessions). A running job is never preempted: bounding the work of one job (the
length of instructions, a prefill) is the caller's part.

Cross-session batching: a job submitted with `run_batched(batcher, item)` runs together with the first queued
job of every other owner that names the same batcher (up to `batcher.max_batch`), as one
`batcher.run_batch(items)` call: the decode steps of several sessions become one batched forward. An item the
batcher reports `NOT_DONE` (a prefill that got one chunk of its token budget this time) goes back to the front
of its owner's queue and that owner to the back of the turn order, so the jobs of other owners run between
its chunks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
# Whose job this is (a session id); asyncio tasks inherit it from the task that created them.
job_owner: ContextVar[str] = ContextVar("job_owner", default="")


NOT_DONE: Any = object()  # a batcher's result for an item that needs another turn (see the module docstring)


class Batcher(Protocol):
    """Runs several owners' items as one job; results in the items' order: a value, an exception (raised to
    that item's caller only) or NOT_DONE."""

    max_batch: int

    def run_batch(self, items: list[Any]) -> list[Any]: ...


@dataclass
class _Job:
    fn: Callable[..., Any] | None
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    owner: str = ""
    batcher: Batcher | None = None


class WorkerStopped(RuntimeError):
    """The worker was stopped before the job could run."""


class DeviceWorker:
    """Runs submitted callables on one dedicated thread, in submission order."""

    def __init__(self, name: str = "device-worker") -> None:
        self.name = name
        self.jobs_run = 0
        self.busy_seconds = 0.0
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()  # owner -> jobs; the front owner goes next
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_queued = False

    def start(self) -> None:
        if self._thread is None:
            self._stop_queued = False
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        with self._ready:
            return sum(len(q) for q in self._queues.values())

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker thread and return its result (or raise its exception).

        Cancelling the caller cancels a job that has not started; a started job finishes, its result dropped."""
        result: T = await self._submit(fn, args, None)
        return result

    async def run_batched(self, batcher: Batcher, item: Any) -> Any:
        """`batcher.run_batch([item, ...])` on the worker thread, batched with other owners' items for the same
        batcher that are next in their queues; returns this item's result (or raises its exception)."""
        return await self._submit(None, (item,), batcher)

    async def _submit(self, fn: Callable[..., Any] | None, args: tuple[Any, ...], batcher: Batcher | None) -> Any:
        if self._stopping or not self.running:
            raise WorkerStopped(f"{self.name} is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        owner = job_owner.get()
        self._put(owner, _Job(fn, args, fut, loop, owner, batcher))
        return await fut

    def _put(self, owner: str, job: _Job | None, front: bool = False) -> None:
        with self._ready:
            if job is None:
                self._stop_queued = True  # the thread ends once every queued job has run
            elif front:  # a batched item's next turn: first of its owner's jobs, its owner last in the order
                self._queues.setdefault(owner, deque()).appendleft(job)
                self._queues.move_to_end(owner)
            else:
                self._queues.setdefault(owner, deque()).append(job)
            self._ready.notify()

    def _take(self) -> list[_Job] | None:
        """The next job: the first queued job of the owner at the front, which then moves to the back; for a
        batched job, also the first job of each later owner that names the same batcher."""
        with self._ready:
            while not any(self._queues.values()):
                if self._stop_queued:
                    return None
                self._ready.wait()
            owner = next(o for o, q in self._queues.items() if q)
            taken = [self._pop(owner)]
            batcher = taken[0].batcher
            if batcher is not None:
                for other in [o for o, q in self._queues.items() if q and o != owner]:
                    if len(taken) >= batcher.max_batch:
                        break
                    if self._queues[other][0].batcher is batcher:
                        taken.append(self._pop(other))
            return taken

    def _pop(self, owner: str) -> _Job:
        jobs = self._queues[owner]
        job = jobs.popleft()
        self._queues.move_to_end(owner)
        if not jobs:
            del self._queues[owner]
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        self._stopping = True
        if self._thread is not None:
            self._put("", None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("%s did not stop within %.0f s", self.name, timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            # benign race: a job cancelled just now still runs, its result dropped
            jobs = [job for job in taken if not job.future.cancelled()]
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:
                if jobs[0].batcher is None:
                    self._run_one(jobs[0])
                else:
                    self._run_batch(jobs[0].batcher, jobs)
            finally:
                self.busy_seconds += time.perf_counter() - t0
                self.jobs_run += 1

    def _run_one(self, job: _Job) -> None:
        assert job.fn is not None
        try:
            result = job.fn(*job.args)
        except BaseException as e:  # handed to the awaiting session, which decides
            self._settle(job, None, e)
        else:
            self._settle(job, result, None)

    def _run_batch(self, batcher: Batcher, jobs: list[_Job]) -> None:
        try:
            results = batcher.run_batch([job.args[0] for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"batcher gave {len(results)} results for {len(jobs)} items")
        except BaseException as e:  # the batch as a whole failed: every caller in it hears of it
            for job in jobs:
                self._settle(job, None, e)
            return
        for job, result in zip(jobs, results, strict=True):
            if result is NOT_DONE:
                self._put(job.owner, job, front=True)
            elif isinstance(result, BaseException):
                self._settle(job, None, result)
            else:
                self._settle(job, result, None)

    @staticmethod
    def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
