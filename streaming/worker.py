"""Worker threads: the device worker runs the model steps of every session; a second instance, the media
worker, runs their VAD, resampling and image work, so that input is never queued behind a model step.

The event loop never does this work itself; sessions `await worker.run(fn, ...)`. Jobs run on a single thread,
taken round-robin between owners (`job_owner`, set per session task) and in submission order within one owner,
so the steps of many sessions interleave (a reply is advanced one `next()` per job), a session with many jobs
queued cannot make another wait behind all of them, and the calls into one engine session never overlap (only
the device worker calls engine sessions). A running job is never preempted: bounding the work of one job (the
length of instructions, a prefill) is the caller's part. One thread
per device is also where cross-session batching goes later: the queue already holds the pending steps of all
sessions.
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
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
# Whose job this is (a session id); asyncio tasks inherit it from the task that created them.
job_owner: ContextVar[str] = ContextVar("job_owner", default="")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


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
        if self._stopping or not self.running:
            raise WorkerStopped(f"{self.name} is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put(job_owner.get(), _Job(fn, args, fut, loop))
        return await fut

    def _put(self, owner: str, job: _Job | None) -> None:
        with self._ready:
            if job is None:
                self._stop_queued = True  # the thread ends once every queued job has run
            else:
                self._queues.setdefault(owner, deque()).append(job)
            self._ready.notify()

    def _take(self) -> _Job | None:
        """The next job: the first queued job of the owner at the front, which then moves to the back."""
        with self._ready:
            while not any(self._queues.values()):
                if self._stop_queued:
                    return None
                self._ready.wait()
            owner, jobs = next((o, q) for o, q in self._queues.items() if q)
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
            job = self._take()
            if job is None:
                return
            if job.future.cancelled():  # benign race: a job cancelled just now still runs, its result dropped
                continue
            t0 = time.perf_counter()
            try:
                result = job.fn(*job.args)
            except BaseException as e:  # handed to the awaiting session, which decides
                self._settle(job, None, e)
            else:
                self._settle(job, result, None)
            finally:
                self.busy_seconds += time.perf_counter() - t0
                self.jobs_run += 1

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
