"""How long a maximal prefill of one session holds another session's reply, on the embedded engine.

    python -m benchmarks.prefill_fairness                      # 8,000-char instructions + an 8,000-char message
    python -m benchmarks.prefill_fairness --instructions-chars 8000 --message-chars 8000 --repeats 3

Two sessions of the session runtime share one device worker, as `omni serve` runs them (text replies, so
that the numbers are the LM's). Session B asks a short typed question: first alone, then right after session
A asked for a reply whose prompt is maximal (instructions at the server's limit, `--instructions-chars`, and a
typed message of `--message-chars`, both of made-up words that cost ~2-3 characters a token). Prints B's
latency to its first text delta and to `response.done`, alone and beside A (medians over `--repeats`), and
A's own prefill time: B's added latency is how long it was queued behind A's prefill jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import numpy as np

from omni.streaming.session import Session
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker


def gibberish(chars: int, seed: int) -> str:
    """Made-up words (2-7 letters): a prompt of many tokens per character, as a hostile client would send."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: list[str] = []
    n = 0
    while n < chars:
        w = "".join(rng.choice(letters, int(rng.integers(2, 8))))
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:chars]


class Client:
    """One session driven by events, as a client would; records when replies' events arrive."""

    def __init__(self, engine: Any, worker: DeviceWorker, media: DeviceWorker, vad: Any, instructions: str | None
                 ) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.session = Session(engine, worker, vad, self._emit, SessionConfig(
            create_response=False, speech=False, instructions=instructions), media=media)

    def _emit(self, e: dict[str, Any]) -> None:
        self.events.append((time.perf_counter(), e))
        self.changed.set()

    async def ask(self, text: str) -> tuple[float, float]:
        """Seconds from `response.create` to the first text delta and to `response.done`."""
        self.events.clear()
        self.session.handle_client_event({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        t0 = time.perf_counter()
        self.session.handle_client_event({"type": "response.create"})
        while not any(e["type"] == "response.done" for _, e in self.events):
            self.changed.clear()
            await self.changed.wait()
        first = next((t for t, e in self.events if e["type"].endswith("text.delta")), time.perf_counter())
        done = next(t for t, e in self.events if e["type"] == "response.done")
        return first - t0, done - t0


async def run(args: argparse.Namespace) -> None:
    import torch

    from omni.streaming.engines.embedded import EmbeddedEngine

    torch.set_num_threads(1)  # as omni serve runs the embedded engine
    engine = EmbeddedEngine(speak=False, listen=False)
    worker, media = DeviceWorker(), DeviceWorker("media-worker")
    worker.start()
    media.start()
    vad = await media.run(SileroVad)
    question = "What is the capital of France?"
    alone: list[tuple[float, float]] = []
    beside: list[tuple[float, float]] = []
    hog_first: list[float] = []
    for r in range(args.repeats):
        b = Client(engine, worker, media, vad, None)
        await b.session.start()
        alone.append(await b.ask(question))
        await b.session.close()
        a = Client(engine, worker, media, vad, gibberish(args.instructions_chars, 2 * r))
        b = Client(engine, worker, media, vad, None)
        await a.session.start()
        await b.session.start()
        hog = asyncio.ensure_future(a.ask(gibberish(args.message_chars, 2 * r + 1)))
        await asyncio.sleep(0.05)  # A's reply job is on the worker
        beside.append(await b.ask(question))
        print(f"  repeat {r + 1}: B alone first text {alone[-1][0] * 1e3:.0f} ms (done {alone[-1][1] * 1e3:.0f} ms); "
              f"beside A {beside[-1][0] * 1e3:.0f} ms (done {beside[-1][1] * 1e3:.0f} ms); load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        hog_first.append((await hog)[0])
        tokens = a.session.engine_session.chat.last.prompt_tokens  # type: ignore[union-attr]
        print(f"  repeat {r + 1}: A {tokens} prompt tokens, first text {hog_first[-1] * 1e3:.0f} ms", flush=True)
        await a.session.close()
        await b.session.close()
    worker.stop()
    media.stop()

    def med(xs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs) * 1e3

    print(f"session B alone: first text {med(alone, 0):.0f} ms, done {med(alone, 1):.0f} ms")
    print(f"session B beside A's prefill: first text {med(beside, 0):.0f} ms, done {med(beside, 1):.0f} ms "
          f"(added {med(beside, 0) - med(alone, 0):.0f} ms to the first text)")
    print(f"session A: {tokens} prompt tokens, first text after {statistics.median(hog_first) * 1e3:.0f} ms; "
          f"medians over {args.repeats}, worker jobs run {worker.jobs_run}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instructions-chars", type=int, default=8000, help="session A's instructions (the limit)")
    p.add_argument("--message-chars", type=int, default=8000, help="session A's typed message")
    p.add_argument("--repeats", type=int, default=3)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
