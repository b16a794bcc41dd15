"""Sessions batched on the device through the tiny engine (omni/streaming/batching.py): a session's reply is the same
alone and batched with others that join, prefill and leave mid-stream (greedy, float32, CPU), and a long
prompt is prefilled in chunks under the token budget, interleaved with the other sessions' decode steps.

The scheduling is checked by the batcher's iteration log and the worker's job order, not by timing."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import numpy as np

from omni.streaming.batching import Forward, ModelReply, ReplyGenerator
from omni.streaming.engine import EngineEvent, ReplyDone, TextDelta
from omni.streaming.engines.tiny import TinyLMEngine, TinyLMSession
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import NOT_DONE, DeviceWorker, job_owner
from tests.streaming.harness import Harness
from tests.streaming.test_tiny_engine import assert_cache_holds_conversation, reply_text, speak

GREEDY = {"seed": 3, "temperature": 0.0, "min_new_tokens": 10, "max_new_tokens": 20, "token_budget": 12}
LONG = "Speak like a sailor, keep every answer short, and never mention the weather or the sea."


def start(engine: TinyLMEngine, k: int) -> tuple[TinyLMSession, ModelReply]:
    """Session k's turn (its own instructions and speech) up to the start of its reply."""
    s = engine.open_session(instructions=LONG if k == 3 else f"Session {k}.")
    speak(s, 1.0 + 0.5 * k, 0.04 * (k + 1), seed=k)
    reply = s.respond()
    assert isinstance(reply, ModelReply)
    return s, reply


def alone(k: int) -> str:
    """Session k's reply text in an engine of its own, advanced step by step (the unbatched path)."""
    _, reply = start(TinyLMEngine(**GREEDY), k)
    return reply_text(list(reply))


def test_replies_batched_equal_alone_with_joins_and_leaves() -> None:
    want = [alone(k) for k in range(4)]
    engine = TinyLMEngine(**GREEDY, max_sessions=3)
    sessions: dict[int, tuple[TinyLMSession, ModelReply]] = {k: start(engine, k) for k in (0, 1)}
    events: dict[int, list[EngineEvent]] = {k: [] for k in range(4)}
    for it in range(200):
        if it == 3:
            sessions[2] = start(engine, 2)  # joins while 0 and 1 decode
        if it == 8:  # 0 leaves mid-reply: its row (and the K/V it left there) goes to session 3
            s0, r0 = sessions.pop(0)
            row = engine.decoder.sessions[s0.sid].row  # type: ignore[index]
            r0.close()
            s0.interrupt(reply_text(events[0]))
            s0.close()
            sessions[3] = start(engine, 3)  # a long prompt: prefilled in chunks while 1 and 2 decode
            assert engine.decoder.sessions[sessions[3][0].sid].row == row  # type: ignore[index]
        live = [k for k in sessions if not events[k] or not isinstance(events[k][-1], ReplyDone)]
        if not live and it > 8:
            break
        results = engine.batcher.run_batch([sessions[k][1] for k in live])
        for k, res in zip(live, results, strict=True):
            if res is not NOT_DONE:
                assert res[0] is not None
                events[k].append(res[0])
    assert 0 < len(reply_text(events[0])) < len(want[0]) and want[0].startswith(reply_text(events[0]))
    for k in (1, 2, 3):
        assert reply_text(events[k]) == want[k], f"session {k}"
    log = list(engine.batcher.log)
    assert max(len(i.decoded) for i in log) == 3  # three sessions' decode steps in one forward
    chunks = [n for i in log for label, n in i.prefilled if label == sessions[3][0].label]
    assert len(chunks) >= 3 and all(n <= GREEDY["token_budget"] for n in chunks)


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps() -> None:
    engine = TinyLMEngine(**GREEDY)
    budget = engine.batcher.token_budget
    x, rx = start(engine, 0)
    got_x = [rx.__next__() for _ in range(3)]  # x is replying
    y, ry = start(engine, 3)
    assert len(y.pending) > 3 * budget  # the pushes prefilled a budget each; most of the instructions wait
    prompt = len(y.pending) + 1
    iterations = 0
    while True:
        rx_res, ry_res = engine.batcher.run_batch([rx, ry])
        iterations += 1
        step = engine.batcher.log[-1]
        assert rx_res is not NOT_DONE  # x gets its next event at every iteration of y's prefill
        got_x.append(rx_res[0])
        [(label, n)] = step.prefilled
        assert label == y.label and n + len(step.decoded) <= budget
        if ry_res is not NOT_DONE:
            assert isinstance(ry_res[0], TextDelta)  # the prompt is in: y's first reply character
            break
    assert iterations >= prompt // budget
    got_x += list(rx)
    _, alone_x = start(TinyLMEngine(**GREEDY), 0)
    assert reply_text(got_x) == reply_text(list(alone_x))
    assert reply_text([ry_res[0], *ry]) == alone(3)


async def test_sessions_on_the_device_worker_batch_and_equal_alone(worker: DeviceWorker) -> None:
    """Three sessions' replies driven as the runtime drives them (each session's task awaits one step at a
    time through `run_batched`), started together behind a busy worker so that they batch."""
    want = [alone(k) for k in range(3)]
    engine = TinyLMEngine(**GREEDY)
    replies = [start(engine, k)[1] for k in range(3)]
    gate = threading.Event()

    async def drive(reply: ModelReply) -> str:
        events: list[EngineEvent] = []
        while True:
            ev, _ = await worker.run_batched(reply.batcher, reply)
            if ev is None:
                return reply_text(events)
            events.append(ev)

    def as_owner(owner: str, coro: Any) -> asyncio.Task[Any]:
        ctx = contextvars.copy_context()
        ctx.run(job_owner.set, owner)
        return asyncio.get_running_loop().create_task(coro, context=ctx)

    blocker = asyncio.create_task(worker.run(gate.wait, 10))
    await asyncio.sleep(0.05)
    tasks = [as_owner(f"s{k}", drive(r)) for k, r in enumerate(replies)]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    assert await asyncio.gather(*tasks) == want
    # the first job: the three prompts' last token (the pushes prefilled the rest) in one batched forward
    assert len(engine.batcher.log[0].decoded) == 3


def test_a_reply_cut_while_its_prompt_is_prefilled_keeps_the_conversation() -> None:
    """Interrupted between two chunks of its prompt: the unfed rest and the played text are queued, so the cache
    and `pending` still hold exactly the conversation the text history renders."""
    engine = TinyLMEngine(**GREEDY)
    y, ry = start(engine, 3)
    assert engine.batcher.run_batch([ry]) == [NOT_DONE]  # one chunk in, the rest of the prompt waits
    ry.close()
    y.interrupt("")
    assert list(y.history)[-1] == ("assistant", "")
    assert_cache_holds_conversation(engine, y)
    speak(y, 1.0, 0.2, seed=9)  # the next turn goes on from there
    events = list(y.respond())
    assert isinstance(events[-1], ReplyDone)
    assert_cache_holds_conversation(engine, y)


def test_a_failing_reply_fails_alone_in_its_batch() -> None:
    engine = TinyLMEngine(**GREEDY)
    x, rx = start(engine, 0)
    y, _ = start(engine, 1)

    def broken() -> ReplyGenerator:
        yield Forward([1])
        raise RuntimeError("simulated engine fault")

    bad = ModelReply(broken(), engine.model, y.state, engine.batcher, y.sid, y.label)
    results = engine.batcher.run_batch([rx, bad])
    assert isinstance(results[1], RuntimeError) and isinstance(results[0][0], TextDelta)
    assert reply_text([results[0][0], *rx]) == alone(0)


async def session_replies(engine: TinyLMEngine, voices: list[np.ndarray], worker: DeviceWorker,
                          media: DeviceWorker, vad: SileroVad) -> list[str]:
    """Each voice speaks one turn to its own runtime Session (all at once, on one worker); their reply texts."""
    hs = [Harness(engine, worker, vad, SessionConfig(turn=TurnConfig(silence_ms=700)), media=media) for _ in voices]
    for h in hs:
        await h.start()
    try:
        await asyncio.gather(*(h.feed(pcm, realtime=False) for h, pcm in zip(hs, voices, strict=True)))
        await asyncio.gather(*(h.silence(1.0, realtime=False) for h in hs))
        done = await asyncio.gather(*(h.wait_for("response.done") for h in hs))
    finally:
        for h in hs:
            await h.close()
    assert all(d["response"]["status"] == "completed" for d in done)
    return [d["response"]["output"][0]["content"][0]["transcript"] for d in done]


async def test_runtime_sessions_reply_as_they_do_alone(
    worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    """Two runtime Sessions replying at the same time (their steps go through run_batched, batched whenever both
    are queued) say what each says alone."""
    voices = [speech16k, (speech16k // 3).astype(np.int16)]
    config = {**GREEDY, "min_new_tokens": 30, "max_new_tokens": 40}
    want = [(await session_replies(TinyLMEngine(**config), [v], worker, media, vad))[0] for v in voices]
    engine = TinyLMEngine(**config)
    assert await session_replies(engine, voices, worker, media, vad) == want
    assert want[0] != want[1]
    assert sum(len(i.decoded) for i in engine.batcher.log) >= 60  # the replies' steps went through the batcher
