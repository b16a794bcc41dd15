"""Barge-in does not wait behind model steps: VAD runs on the media lane while an engine step is running.

The engine's step is held open by a gate that only the test releases, so "before the step finished" is an
ordering fact, not a timing: speech_started and the cleared output must arrive while the step is still blocked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from omni.streaming.engine import SPOKEN_REPLY, EngineEvent, ResponseOptions, TextDelta
from omni.streaming.engines.tone import ToneEngine, ToneSession
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness

GATE_LIMIT = 30.0  # the gate opens by itself after this, so a runtime that waits for the step still ends


class GatedEngine(ToneEngine):
    """A tone engine whose reply runs `free_words` steps, then blocks its next step until `gate` is set;
    it records how many threads are inside one session's methods at once."""

    def __init__(self, free_words: int) -> None:
        super().__init__(seconds_per_char=0.15)  # "Hello, I heard you" = 2.3 s of speech queued before the gate
        self.free_words = free_words
        self.gate = threading.Event()
        self.blocked = threading.Event()  # the gated step has started
        self.step_finished = threading.Event()  # the gated step has returned
        self.interrupted = threading.Event()  # the runtime told the engine session what was played
        self.inside = 0
        self.max_inside = 0
        self._count = threading.Lock()

    def enter(self) -> None:
        with self._count:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)

    def leave(self) -> None:
        with self._count:
            self.inside -= 1

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> ToneSession:
        s = super().open_session(instructions=instructions, voice=voice)
        engine = self
        inner_respond, inner_push, inner_interrupt = s.respond, s.push_audio, s.interrupt

        def respond(options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
            words = 0
            it = inner_respond(options)
            while True:
                engine.enter()
                try:
                    ev = next(it, None)
                    if isinstance(ev, TextDelta):
                        words += 1
                        if words == engine.free_words + 1:
                            engine.blocked.set()
                            engine.gate.wait(GATE_LIMIT)
                            engine.step_finished.set()
                finally:
                    engine.leave()
                if ev is None:
                    return
                yield ev

        def push_audio(pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
            engine.enter()
            try:
                return inner_push(pcm, timestamp)
            finally:
                engine.leave()

        def interrupt(played_text: str) -> None:
            engine.enter()
            try:
                inner_interrupt(played_text)
            finally:
                engine.leave()
            engine.interrupted.set()

        s.respond = respond  # type: ignore[method-assign]
        s.push_audio = push_audio  # type: ignore[method-assign]
        s.interrupt = interrupt  # type: ignore[method-assign]
        return s


async def test_speech_onset_cancels_the_reply_while_an_engine_step_runs(
    worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = GatedEngine(free_words=4)
    h = Harness(engine, worker, vad, media=media)
    await h.start()
    try:
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        await h.wait_for("output_audio_buffer.started")
        assert await asyncio.to_thread(engine.blocked.wait, GATE_LIMIT)  # the reply's fifth step is running
        earlier = {id(e) for e in h.events}
        await h.feed(speech16k[:16000], realtime=True)  # the user talks over the reply
        await h.wait_for(
            lambda e: e["type"] == "input_audio_buffer.speech_started" and id(e) not in earlier, limit=GATE_LIMIT
        )
        await h.wait_for("output_audio_buffer.cleared", limit=GATE_LIMIT)
        step_still_running = not engine.step_finished.is_set()
        n_played = len(h.played)
        await asyncio.sleep(0.3)
        after = np.concatenate(h.played[n_played:])
        engine.gate.set()
        metrics = await h.wait_for("omni.metrics")
        assert await asyncio.to_thread(engine.interrupted.wait, GATE_LIMIT)
    finally:
        engine.gate.set()
        await h.close()
    assert step_still_running, "barge-in waited for the engine step to finish"
    assert np.abs(after).max() == 0  # the output went silent while the step was still blocked
    assert metrics["interrupted"]
    session = engine.sessions[0]
    played_text = session.interrupted_with[-1]
    assert len(played_text.split()) < engine.free_words  # cut while speech for the free words was still queued
    assert session.history[-1] == ("assistant", played_text)
    assert engine.max_inside == 1  # never two threads inside one engine session


async def test_single_lane_session_still_barges_in(worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray) -> None:
    """Without a media lane the device worker does the audio work too: barge-in then waits for the step."""
    engine = GatedEngine(free_words=4)
    h = Harness(engine, worker, vad)
    await h.start()
    try:
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        await h.wait_for("output_audio_buffer.started")
        assert await asyncio.to_thread(engine.blocked.wait, GATE_LIMIT)
        await h.feed(speech16k[:16000], realtime=True)
        assert "output_audio_buffer.cleared" not in h.types()  # the VAD job is queued behind the blocked step
        engine.gate.set()
        await h.wait_for("output_audio_buffer.cleared")
    finally:
        engine.gate.set()
        await h.close()
    assert engine.step_finished.is_set() and engine.max_inside == 1


class CancelAfterStepEngine(ToneEngine):
    """A tone engine whose reply, in its `at`-th step (on the worker thread), asks the event loop to cancel the
    response `hops` loop iterations after that step's result is handed back. Counts the steps it took."""

    def __init__(self, at: int, hops: int) -> None:
        super().__init__(seconds_per_char=0.01)
        self.at, self.hops, self.steps = at, hops, 0
        self.cancel: Callable[[], None] = lambda: None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _later(self, n: int) -> None:
        assert self.loop is not None
        if n == 0:
            self.cancel()
        else:
            self.loop.call_soon(self._later, n - 1)

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> ToneSession:
        s = super().open_session(instructions=instructions, voice=voice)
        inner_respond = s.respond

        def respond(options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
            for ev in inner_respond(options):
                self.steps += 1
                if self.steps == self.at:
                    assert self.loop is not None  # queued before the worker hands this step's result back
                    self.loop.call_soon_threadsafe(self._later, self.hops)
                yield ev

        s.respond = respond  # type: ignore[method-assign]
        return s


async def cancel_after_step(worker: DeviceWorker, vad: SileroVad, hops: int) -> tuple[list[str], int, int]:
    """A text reply cancelled `hops` loop iterations after its third step was handed back: the statuses of
    every response.done, the engine's steps when the first was emitted, and its steps in all."""
    engine = CancelAfterStepEngine(at=3, hops=hops)
    h = Harness(engine, worker, vad, SessionConfig(create_response=False))
    engine.loop = asyncio.get_running_loop()
    engine.cancel = lambda: h.session.handle_client_event({"type": "response.cancel"})
    steps_at_done: list[int] = []
    emit = h.session._emit

    def count_steps(event: dict[str, Any]) -> None:
        if event["type"] == "response.done":
            steps_at_done.append(engine.steps)
        emit(event)

    h.session._emit = count_steps
    await h.start(play=False)
    try:
        h.session.handle_client_event({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await h.wait_for("response.done")
    finally:
        await h.close()
    return [e["response"]["status"] for e in h.events if e["type"] == "response.done"], steps_at_done[0], engine.steps


async def test_a_cancel_that_lands_just_after_a_step_still_ends_the_reply(worker: DeviceWorker, vad: SileroVad) -> None:
    """The cancel is asked for at every loop iteration around a finished step's hand-back (0-5 hops after it):
    the reply must end cancelled and take no step after the one in flight when the cancel lands. (asyncio.wait_for
    on Python 3.11 returned a step's result when the cancel came after the step had finished, swallowing the
    cancellation: the reply went on generating into the cache after the barge-in.)"""
    for hops in range(6):
        statuses, steps_at_cancel, steps = await cancel_after_step(worker, vad, hops)
        assert statuses == ["cancelled"], f"hops={hops}"
        # the cancelled response.done is emitted as the reply task is cancelled: one step may be in flight then
        assert steps <= steps_at_cancel + 1, f"hops={hops}: {steps} steps, the reply went on"
