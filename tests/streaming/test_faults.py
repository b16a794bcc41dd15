"""Faults inside one session: an engine exception mid-reply and a stalled engine step end that reply with an
error, and the session goes on; the device worker takes turns between sessions."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.rtc_client import WAIT, wait_for_event
from benchmarks.ws_client import invalid_events, response_order_problems
from omni.streaming.engine import SPOKEN_REPLY, EngineEvent, ResponseOptions
from omni.streaming.engines.tone import ToneEngine, ToneSession
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker, job_owner
from tests.streaming.harness import Harness


class FaultyEngine(ToneEngine):
    """The first reply raises after two events (`mode="raise"`) or stalls for `stall` seconds in one step."""

    def __init__(self, mode: str, stall: float = 0.0) -> None:
        super().__init__(seconds_per_char=0.01)
        self.mode, self.stall, self.replies = mode, stall, 0

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> ToneSession:
        session = super().open_session(instructions=instructions, voice=voice)
        respond = session.respond

        def faulty(options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
            self.replies += 1
            events = respond(options)
            if self.replies > 1:
                return events
            return self._break(events)

        session.respond = faulty  # type: ignore[method-assign]
        return session

    def _break(self, events: Iterator[EngineEvent]) -> Iterator[EngineEvent]:
        yield next(events)
        yield next(events)
        if self.mode == "raise":
            raise RuntimeError("simulated engine fault")
        time.sleep(self.stall)
        yield from events


async def reply_after(h: Harness[Any], start: int) -> dict[str, Any]:
    h.session.handle_client_event({"type": "response.create"})
    return await wait_for_event(h.events, h._changed, "response.done", WAIT, start)


def protocol_problems(events: list[dict[str, Any]]) -> list[str]:
    """Events the official SDK does not parse, and responses that do not open and close in the protocol's order
    (a failed or cancelled one included: its part's and item's `.done` events, then response.done)."""
    return invalid_events(events) + response_order_problems(events)


# The WebRTC transport (audio on a track) and the WebSocket one (audio as events) end replies differently.
TRANSPORTS = pytest.mark.parametrize("over_events", [False, True], ids=["webrtc", "websocket"])


@TRANSPORTS
async def test_engine_exception_mid_reply_fails_that_reply_only(
    worker: DeviceWorker, vad: SileroVad, over_events: bool
) -> None:
    config = SessionConfig(create_response=False, audio_over_events=over_events)
    h = Harness(FaultyEngine("raise"), worker, vad, config)
    await h.start()
    try:
        done = await reply_after(h, 0)
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["code"] == "engine_error"
        err = next(e for e in h.events if e["type"] == "error")
        assert err["error"]["code"] == "engine_error" and "simulated engine fault" in err["error"]["message"]
        again = await reply_after(h, len(h.events))
        assert again["response"]["status"] == "completed" and h.session.failure is None
        assert protocol_problems(h.events) == []
    finally:
        await h.close()


@TRANSPORTS
async def test_a_cancelled_reply_closes_its_part_and_item(worker: DeviceWorker, vad: SileroVad, over_events: bool
                                                         ) -> None:
    h = Harness(ToneEngine(step_delay=0.1), worker, vad,
                SessionConfig(create_response=False, audio_over_events=over_events))
    await h.start()
    try:
        h.session.handle_client_event({"type": "response.create"})
        await wait_for_event(h.events, h._changed, "response.output_text.delta", WAIT, 0)
        h.session.handle_client_event({"type": "response.cancel"})
        done = await wait_for_event(h.events, h._changed, "response.done", WAIT, 0)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert protocol_problems(h.events) == []
    finally:
        await h.close()


@TRANSPORTS
async def test_stalled_engine_step_becomes_an_error(worker: DeviceWorker, vad: SileroVad, over_events: bool) -> None:
    config = SessionConfig(create_response=False, step_timeout=0.5, audio_over_events=over_events)
    h = Harness(FaultyEngine("stall", stall=3.0), worker, vad, config)
    await h.start()
    try:
        done = await reply_after(h, 0)
        assert done["response"]["status"] == "failed"
        assert any(e["type"] == "error" and e["error"]["code"] == "engine_timeout" for e in h.events)
        again = await reply_after(h, len(h.events))  # runs once the stalled step has returned
        assert again["response"]["status"] == "completed"
        assert protocol_problems(h.events) == []
    finally:
        await h.close()


async def test_worker_takes_turns_between_owners(worker: DeviceWorker) -> None:
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> None:
        order.append(name)

    async def as_owner(owner: str, fn: Any, *args: Any) -> None:
        await worker.run(fn, *args)

    def submit(owner: str, fn: Any, *args: Any) -> asyncio.Task[None]:
        ctx = contextvars.copy_context()
        ctx.run(job_owner.set, owner)
        return asyncio.get_running_loop().create_task(as_owner(owner, fn, *args), context=ctx)

    tasks = [submit("a", gate.wait, 10)]
    await asyncio.sleep(0.05)  # the worker is now busy with a's first job
    tasks += [submit("a", job, f"a{i}") for i in range(5)]
    await asyncio.sleep(0.01)
    tasks.append(submit("b", job, "b0"))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    assert order[:2] == ["a0", "b0"]  # b waits behind one job of a's, not all five
    assert order[2:] == ["a1", "a2", "a3", "a4"]
