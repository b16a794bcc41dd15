"""L2 summaries by the engine's own LM on the device worker, at a priority below every turn (issue 12).

The memory's consolidator thread (omni.memory.consolidator) calls `summarize(texts)` and waits for the text. Here that
call becomes a series of device-worker jobs, one bounded step each (omni.model.lm.summary: a 32-token prefill chunk or
one decoded token, a few ms for SmolLM2-135M), run only while no one else wants the worker:
- a step starts only after the worker ran none of anyone else's jobs for `idle_s` (50 ms: a reply's steps follow
  each other within a few ms, so a live reply keeps the summary waiting) and finds nothing queued;
- a step job that finds another job queued behind it when it starts does no work and hands the worker over.
A turn therefore waits at most one step already running. The model's weights are shared read-only; the summary
has its own small KV cache, and only the device worker thread runs model code, as for every session.

Queue policy: the consolidator coalesces requests to one per session (bounded by the sessions), and one summary is
in flight at a time; nothing else is queued here. A summary that cannot run (the worker stopped at shutdown, or it
stayed busy for `max_wait_s`) raises, and its events stay unsummarised in the store, to be summarised on a later
request (the consolidator re-reads what is due; sessions left over are requested again when the user returns).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from omni.streaming.worker import DeviceWorker

Steps = Callable[[Sequence[str]], Generator[None, None, str]]


class _Yielded:
    """A step job that handed the worker over without working."""


_YIELDED = _Yielded()


@dataclass
class SummaryStats:
    summaries: int = 0
    steps: int = 0
    yielded: int = 0  # step jobs that found turn work queued and did nothing


class WorkerSummarizer:
    """`summarize(texts) -> str` for the memory's consolidator, run as low-priority device-worker steps."""

    def __init__(self, steps: Steps, idle_s: float = 0.05, max_wait_s: float = 600.0) -> None:
        self.steps = steps
        self.idle_s = idle_s
        self.max_wait_s = max_wait_s
        self.stats = SummaryStats()
        self._worker: DeviceWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attached = threading.Event()
        self._mine = 0  # jobs of ours the worker started (to tell others' jobs from ours in its counter)
        self._others = 0  # others' jobs the worker had run when our last step started

    def attach(self, worker: DeviceWorker, loop: asyncio.AbstractEventLoop) -> None:
        """Use `worker`, whose jobs are submitted on `loop` (the server's, at startup)."""
        self._worker, self._loop = worker, loop
        self._attached.set()

    def __call__(self, texts: Sequence[str]) -> str:
        if not self._attached.wait(self.max_wait_s):
            raise RuntimeError("the summarizer was never attached to a device worker")
        assert self._worker is not None and self._loop is not None
        deadline = time.monotonic() + self.max_wait_s
        gen = self.steps(texts)
        try:
            while True:
                self._wait_idle(deadline)
                seen = -1
                while True:  # back to back while nobody else's job ran in between
                    future = asyncio.run_coroutine_threadsafe(self._worker.run(self._step, gen), self._loop)
                    result = future.result(max(0.0, deadline - time.monotonic()))
                    if isinstance(result, str):
                        self.stats.summaries += 1
                        return result
                    if result is _YIELDED or seen not in (-1, self._others):
                        break
                    seen = self._others
        finally:
            gen.close()

    def _wait_idle(self, deadline: float) -> None:
        """Until the worker ran none of anyone else's jobs for `idle_s` and has none queued."""
        assert self._worker is not None
        seen = -1
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the device worker stayed busy for {self.max_wait_s:g} s: summary left for later")
            time.sleep(self.idle_s)
            others = self._worker.jobs_run - self._mine
            if others == seen and self._worker.pending() == 0:
                return
            seen = others

    def _step(self, gen: Generator[None, None, str]) -> str | _Yielded | None:
        """On the worker thread: one step, unless a job is waiting (then none). Every job before this one has
        finished and been counted, so `jobs_run - _mine` is the count of others' jobs so far."""
        assert self._worker is not None
        self._others = self._worker.jobs_run - self._mine
        self._mine += 1
        if self._worker.pending():
            self.stats.yielded += 1
            return _YIELDED
        self.stats.steps += 1
        try:
            next(gen)
        except StopIteration as stop:
            return str(stop.value)
        return None
