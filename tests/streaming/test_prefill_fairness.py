"""A long prompt on the embedded engine is fed in bounded worker jobs (issue 16: one 200 KB prompt held every other
session for 213 s): another session's jobs never wait behind more than one chunk of it (ordering, from a job log,
not timing), and feeding a prompt in chunks, in pieces ahead of the turn, or giving it up half-way, leaves the
conversation as one-shot feeding does (SmolLM2-135M, greedy)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from omni.model.lm.chat_session import ChatSession
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.streaming.engine import EngineEvent, TextDelta, Working
from omni.streaming.engines.embedded import EmbeddedEngine
from omni.streaming.events import MAX_INSTRUCTIONS_CHARS
from omni.streaming.session import _step
from omni.streaming.worker import DeviceWorker, job_owner

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def lm() -> LoadedLM:
    return load_lm()


def gibberish(chars: int, seed: int) -> str:
    """Made-up words: many tokens per character, as a hostile client's prompt."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(2, 8)))) for _ in range(chars)]
    return " ".join(words)[:chars]


def test_a_maximal_prompt_never_holds_another_sessions_job_for_more_than_one_chunk(lm: LoadedLM) -> None:
    engine = EmbeddedEngine(lm=lm, speak=False, listen=False, sampling=GREEDY)
    chunk = engine.prefill_chunk
    hog = engine.open_session(instructions=gibberish(MAX_INSTRUCTIONS_CHARS, 0))
    hog.push_text(gibberish(MAX_INSTRUCTIONS_CHARS, 1))  # the reply's prompt: instructions + a long message
    other = engine.open_session()
    other.push_text("What is the capital of France?")
    log: list[tuple[str, str, int]] = []  # (event, owner, tokens fed)

    def logged_feed(chat: ChatSession, owner: str) -> None:
        feed = chat._run  # every forward of the chat's model (prompt chunks and decode steps)

        def f(ids: list[int]) -> Any:
            log.append(("feed", owner, len(ids)))
            if owner == "hog" and not started_other.done():  # the hog's first chunk runs: the other asks now
                loop.call_soon_threadsafe(started_other.set_result, None)
            return feed(ids)

        chat._run = f  # type: ignore[method-assign]

    logged_feed(hog.chat, "hog")
    logged_feed(other.chat, "other")

    async def reply(owner: str, session: Any) -> list[EngineEvent]:
        job_owner.set(owner)

        async def job(fn: Callable[..., Any], *args: Any) -> Any:
            log.append(("queued", owner, 0))
            return await worker.run(lambda: (log.append(("start", owner, 0)), fn(*args))[1])

        it: Iterator[EngineEvent] = await job(session.respond)
        events = []
        while (ev := (await job(_step, it))[0]) is not None:
            events.append(ev)
        return events

    async def main() -> tuple[list[EngineEvent], list[EngineEvent]]:
        nonlocal loop, started_other
        loop = asyncio.get_running_loop()
        started_other = loop.create_future()
        hogging = asyncio.ensure_future(contextvars.copy_context().run(reply, "hog", hog))
        await started_other
        asked = asyncio.ensure_future(contextvars.copy_context().run(reply, "other", other))
        return await hogging, await asked

    loop: asyncio.AbstractEventLoop
    started_other: asyncio.Future[None]
    worker = DeviceWorker()
    worker.start()
    try:
        hog_events, other_events = asyncio.run(main())
    finally:
        worker.stop()

    hog_feeds = [n for e, o, n in log if e == "feed" and o == "hog"]
    prompt = hog.chat.last.prompt_tokens
    assert prompt > 4 * chunk  # a prompt of many chunks (instructions at the limit and a long message)
    assert max(hog_feeds) <= chunk
    assert sum(hog_feeds) == prompt + hog.chat.last.new_tokens  # the prompt in chunks, then one token a step
    assert sum(isinstance(e, Working) for e in hog_events) == -(-prompt // chunk) - 1  # one step per chunk
    # Every job of the other session waited behind at most one chunk of the hog's prompt.
    waits: list[int] = []
    for i, (e, o, _) in enumerate(log):
        if e == "queued" and o == "other":
            start = next(j for j in range(i, len(log)) if log[j][:2] == ("start", "other"))
            waits.append(sum(n for e2, o2, n in log[i:start] if e2 == "feed" and o2 == "hog"))
    assert waits and max(waits) <= chunk
    first_other = next(i for i, (e, o, _) in enumerate(log) if e == "feed" and o == "other")
    assert sum(n for e, o, n in log[:first_other] if e == "feed" and o == "hog") < prompt  # it did not wait it out
    # interleaving changed nothing: the other's reply is the one it gives alone
    alone = engine.open_session()
    alone.push_text("What is the capital of France?")
    said = "".join(e.text for e in other_events if isinstance(e, TextDelta))
    assert said and said == "".join(e.text for e in alone.respond() if isinstance(e, TextDelta))


def test_a_prompt_fed_in_chunks_or_ahead_in_pieces_gives_the_one_shot_reply(lm: LoadedLM) -> None:
    system = "You are a helpful voice assistant. " + gibberish(600, 2)
    plain = ChatSession(lm, system, GREEDY)
    chunked = ChatSession(lm, system, GREEDY, prefill_chunk=16)
    ahead = ChatSession(lm, system, GREEDY, prefill_chunk=16)
    fed = [ahead.prefill_history(16)]  # the system prompt a piece per call, as the engine does a piece per push
    while ahead.backlog:
        assert ahead.prefill_turn("Hello.") == 0  # nothing speculative on a history not all in the cache
        fed.append(ahead.prefill_history(16))
    assert len(fed) > 3 and max(fed) == 16 and ahead.prefill_history(16) == 0
    for q in ("What is the capital of France?", "And of Spain?"):
        want = plain.reply(q)
        steps = list(chunked.stream_reply(q))
        assert "".join(steps) == want == ahead.reply(q)
        assert chunked.last.prompt_tokens == plain.last.prompt_tokens
        assert steps.count("") == -(-plain.last.prompt_tokens // 16) - 1  # a step between every two chunks
    assert chunked.state.cache.length == plain.state.cache.length == ahead.state.cache.length


def test_a_reply_given_up_between_chunks_leaves_a_session_that_answers_like_a_fresh_one(lm: LoadedLM) -> None:
    s = ChatSession(lm, "You are brief.", GREEDY, prefill_chunk=8)
    s.reply("Hello there.")
    stream = s.stream_reply("Tell me about the sea. " * 4)
    assert next(stream) == ""  # one chunk of the prompt fed
    stream.close()  # a barge-in between chunks
    assert s.messages[-1] == {"role": "assistant", "content": ""}
    s.truncate_last_reply("")  # what the engine's interrupt does next
    history = list(s.messages)
    fresh = ChatSession(lm, "You are brief.", GREEDY)
    fresh.messages = list(history)
    fresh._ends = [0] * len(history)
    assert s.reply("What is two plus two?") == fresh.reply("What is two plus two?")
    assert s.last.prompt_tokens == fresh.last.prompt_tokens  # the whole history fed again, nothing lost
