"""L2 summaries by the engine's LM on the device worker at low priority (omni.streaming.memory_summary): a summary step
never runs while turn work waits (ordering, not timing), and SmolLM2's summaries reach the store every N events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import pytest

from omni.memory import ConsolidatorConfig, Memory, MemoryConfig, MemoryStore, SegmenterConfig, concat_summary
from omni.memory.testing import HashingEmbedder
from omni.model.lm.summary import SummaryConfig, summary_steps
from omni.model.loaders import load_lm
from omni.streaming.memory_summary import WorkerSummarizer
from omni.streaming.worker import DeviceWorker, job_owner


def _until(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


async def test_a_summary_step_hands_the_worker_to_a_turn_queued_behind_it() -> None:
    worker = DeviceWorker()
    worker.start()
    loop = asyncio.get_running_loop()
    log: list[str] = []
    release, blocked = threading.Event(), threading.Event()

    def blocker() -> None:  # another session's long step, queued while the summary runs
        blocked.set()
        log.append("blocker")
        release.wait(30)

    async def as_owner(owner: str, fn: object) -> None:
        job_owner.set(owner)
        await worker.run(fn)  # type: ignore[arg-type]

    def steps(texts: Sequence[str]) -> Generator[None, None, str]:
        for i in range(6):
            log.append(f"step {i}")
            if i == 2:
                asyncio.run_coroutine_threadsafe(as_owner("other", blocker), loop)
                _until(lambda: worker.pending() == 1, "the blocker to be queued")
            yield
        return " + ".join(texts)

    summarizer = WorkerSummarizer(steps, idle_s=0.01)
    summarizer.attach(worker, loop)
    summary = asyncio.ensure_future(asyncio.to_thread(summarizer, ["a", "b"]))
    try:
        await asyncio.to_thread(blocked.wait, 30)
        # the summary's next step is queued behind the blocker; a turn's job comes after it
        await asyncio.to_thread(_until, lambda: worker.pending() == 1, "the summary's next step")
        turn = asyncio.ensure_future(as_owner("turn", lambda: log.append("turn")))
        await asyncio.to_thread(_until, lambda: worker.pending() == 2, "the turn's job")
        release.set()
        await turn
        assert await summary == "a + b"
    finally:
        release.set()
        worker.stop()
    # the step that was queued first found the turn waiting and did nothing: the turn ran before any more summary
    assert log == ["step 0", "step 1", "step 2", "blocker", "turn", "step 3", "step 4", "step 5"]
    assert summarizer.stats.yielded >= 1 and summarizer.stats.summaries == 1


async def test_the_lm_writes_a_summary_every_n_events(tmp_path: Path) -> None:
    lm = load_lm()  # SmolLM2-135M-Instruct, the embedded engine's LM
    worker = DeviceWorker()
    worker.start()
    summarizer = WorkerSummarizer(lambda texts: summary_steps(lm, texts, SummaryConfig(max_new_tokens=32)))
    summarizer.attach(worker, asyncio.get_running_loop())
    config = MemoryConfig(segmenter=SegmenterConfig(min_turn_s=0.0), consolidator=ConsolidatorConfig(every_events=3))
    memory = Memory(MemoryStore.open(str(tmp_path / "mem")), embed=HashingEmbedder(), config=config,
                    summarize=summarizer)
    turns = [("My sister Anna lives in Lisbon.", "Lisbon is a lovely city."),
             ("She works as a nurse there.", "Nursing is demanding work."),
             ("Her birthday is on the fifth of May.", "I will remember the fifth of May."),
             ("What should I get her?", "Maybe a book about Portugal.")]

    def talk(session: str, n: int) -> None:
        mem = memory.open_session("alice", session, started_at=1000.0)
        for i, (user, reply) in enumerate(turns[:n]):
            mem.add_utterance("user", user, 10.0 * i, 10.0 * i + 3)
            mem.add_utterance("assistant", reply, 10.0 * i + 4, 10.0 * i + 6)
            mem.turn_boundary(10.0 * i + 7)
        memory.flush(timeout=300)

    try:
        await asyncio.to_thread(talk, "s1", 2)
        assert memory.store.load_summaries("alice") == []  # 2 events: none due yet
        await asyncio.to_thread(talk, "s2", 4)  # a second session of the same user: 4 events, 3 due
        summaries = memory.store.load_summaries("alice")
    finally:
        await asyncio.to_thread(memory.close)
        worker.stop()
    # s2: its first 3 events; s1 (left open, as by a crash): its 2 events, summarised once the user came back
    assert sorted((s.session_id, s.level, len(s.children)) for s in summaries) == [("s1", 1, 2), ("s2", 1, 3)]
    events = {e.id: e for e in memory.store.load_events("alice")}
    for s in summaries:
        print(f"summary of events {s.children}: {s.text!r}")
        assert s.text and s.text != concat_summary([events[c].transcript() for c in s.children])  # the LM wrote it
    assert summarizer.stats.summaries == len(summaries) and summarizer.stats.steps > len(summaries)


@pytest.mark.parametrize("texts", [[], ["  ", ""]])
def test_nothing_to_summarize_is_refused(texts: list[str]) -> None:
    with pytest.raises(ValueError, match="nothing to summarize"):
        next(summary_steps(None, texts))  # type: ignore[arg-type]  # refused before the LM is touched
