"""Sessions batched in the live runtime, on the CPU: the tiny engine's replies stepped through the device worker
the way the session runtime steps them (`DeviceWorker.run_batched`, omni/streaming/batching.py).

    .venv/bin/python benchmarks/tiny_sessions.py --sessions 1,4,8 --replies 50

Prints, for one session, the first-token latency (the respond job and the steps until the first text delta)
and ms per step, medians over `--replies` replies; then, for N sessions replying at once, the wall time until
every reply is done and the tokens/s in all, with the engine's KV pool holding every session (their decode
steps batched) and holding one (the others run unbatched, one step per job), and the mean decode batch width.
Torch runs on one thread (`--threads`) so that the numbers compare steps, not thread scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import statistics
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import torch

from omni.streaming.batching import ModelReply
from omni.streaming.engine import TextDelta
from omni.streaming.engines.tiny import TinyLMEngine, TinyLMSession
from omni.streaming.worker import DeviceWorker, job_owner

NEW_TOKENS = 48
T = TypeVar("T")


def open_turn(engine: TinyLMEngine, k: int, rng: np.random.Generator) -> TinyLMSession:
    """A session that has heard two seconds of noise and ended its turn."""
    s = engine.open_session(instructions=f"Session {k}.")
    for _ in range(2):
        s.push_audio((0.05 * rng.standard_normal(16000)).astype(np.float32), 0.0)
    s.end_turn()
    return s


async def reply(worker: DeviceWorker, s: TinyLMSession) -> tuple[float, float, int]:
    """(first-token s, s per later step, text deltas) of one reply, stepped as the runtime steps it."""
    t0 = time.perf_counter()
    it = await worker.run(s.respond)
    assert isinstance(it, ModelReply)
    first, steps, chars = 0.0, 0, 0
    while True:
        ev, _ = await worker.run_batched(it.batcher, it)
        steps += 1
        if isinstance(ev, TextDelta):
            chars += 1
            first = first or time.perf_counter() - t0
        if ev is None:
            return first, (time.perf_counter() - t0 - first) / max(steps - 1, 1), chars


def as_owner(owner: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task whose worker jobs are `owner`'s (a session's, in the runtime)."""
    ctx = contextvars.copy_context()
    ctx.run(job_owner.set, owner)
    return asyncio.get_running_loop().create_task(coro, context=ctx)


def pool_rows(n: int) -> list[tuple[int, str]]:
    """The KV pool sizes compared for n sessions: a row each (decode steps batched), then one (unbatched)."""
    return [(n, "batched"), (1, "unbatched")] if n > 1 else [(1, "unbatched")]


async def one_session(worker: DeviceWorker, replies: int) -> tuple[float, float]:
    engine = TinyLMEngine(temperature=0.0)
    rng = np.random.default_rng(0)
    firsts, steps = [], []
    for i in range(replies + 3):
        s = open_turn(engine, i, rng)
        first, step, _ = await reply(worker, s)
        s.close()
        if i >= 3:  # warm-up
            firsts.append(first)
            steps.append(step)
    return statistics.median(firsts), statistics.median(steps)


async def many_sessions(worker: DeviceWorker, n: int, rows: int) -> tuple[float, int, float]:
    """(wall s, tokens, mean decode batch width) of n replies at once, with `rows` sessions in the pool."""
    engine = TinyLMEngine(temperature=0.0, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, max_sessions=rows)
    rng = np.random.default_rng(0)
    sessions = [open_turn(engine, k, rng) for k in range(n)]
    t0 = time.perf_counter()
    done = await asyncio.gather(*(as_owner(f"s{k}", reply(worker, s)) for k, s in enumerate(sessions)))
    wall = time.perf_counter() - t0
    widths = [len(i.decoded) for i in engine.batcher.log if i.decoded]
    return wall, sum(chars for _, _, chars in done), statistics.mean(widths)


async def run(args: argparse.Namespace) -> None:
    worker = DeviceWorker()
    worker.start()
    try:
        first, step = await one_session(worker, args.replies)
        print(f"one session: first token {first * 1e3:.2f} ms, {step * 1e3:.3f} ms/step (medians of {args.replies})")
        for n in args.sessions:
            for rows, kind in pool_rows(n):
                wall, tokens, width = min([await many_sessions(worker, n, rows) for _ in range(args.repeats)])
                print(f"{n:>3} sessions {kind:>9}: {wall * 1e3:7.1f} ms for {tokens} tokens = {tokens / wall:6.0f} "
                      f"tokens/s, mean decode batch {width:.1f}")
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="1,4,8", help="numbers of sessions replying at once")
    p.add_argument("--replies", type=int, default=50, help="replies timed for the one-session latency")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest is printed")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",")]
    torch.set_num_threads(args.threads)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
