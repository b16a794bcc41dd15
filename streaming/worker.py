"""Worker threads: the device worker runs the model steps of every session; a second instance, the media
worker, runs their VAD, resampling and image work, so that input is never queued behind a model step.

The event loop never does this work itself; sessions `await worker.run(fn, ...)`. Jobs run first come, first
served on a single thread, so the steps of many sessions interleave (a reply is advanced one `next()` per job)
and the calls into one engine session never overlap (only the device worker calls engine sessions). One thread
per device is also where cross-session batching goes later: the queue already holds the pending steps of all
sessions.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker thread and return its result (or raise its exception).

        Cancelling the caller cancels a job that has not started; a started job finishes, its result dropped."""
        if self._stopping or not self.running:
            raise WorkerStopped(f"{self.name} is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, args, fut, loop))
        return await fut

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        self._stopping = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("%s did not stop within %.0f s", self.name, timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
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
