"""Session runtime through the frames-in/frames-out harness (real VAD, tone engine, fake 20 ms track)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import numpy as np

from omni.streaming.engines.tone import ToneEngine
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness


async def test_one_turn_text_audio_and_metrics(worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray) -> None:
    h = Harness(ToneEngine(), worker, vad)
    async with h.running():
        await h.say(speech16k)
        metrics = await h.wait_for("omni.metrics")
    types = h.types()
    order = [
        "session.created",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_text.delta",
        "response.done",
        "output_audio_buffer.stopped",
        "omni.metrics",
    ]
    assert all(t in types for t in order), set(order) - set(types)
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order)
    # playback starts on the track's next 20 ms tick: before or after a fast reply's response.done
    started = types.index("output_audio_buffer.started")
    assert types.index("response.output_text.delta") < started < types.index("output_audio_buffer.stopped")
    text = h.completed_reply()
    assert text.startswith("Hello, I heard")
    played = np.concatenate(h.played).astype(np.float32) / 32768
    assert np.sqrt(np.mean(played**2)) > 0.05  # the tones reached the track
    assert metrics["end_of_speech_to_first_audio_ms"] is not None and not metrics["interrupted"]
    assert h.engine.sessions[0].history[-1] == ("assistant", text)


async def test_barge_in_stops_audio_and_keeps_only_what_was_played(
    worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = ToneEngine(step_delay=0.1)  # a slow reply: 15 words over 1.5 s, speech 4 s long
    h = Harness(engine, worker, vad)
    await h.start()
    try:
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        await h.wait_for("output_audio_buffer.started")
        await asyncio.sleep(0.6)
        await h.feed(speech16k[:16000], realtime=True)  # the user talks over the reply
        cleared = await h.wait_for("output_audio_buffer.cleared")
        metrics = await h.wait_for("omni.metrics")
        n_played = len(h.played)
        await asyncio.sleep(0.3)
        after = np.concatenate(h.played[n_played:])
    finally:
        await h.close()
    assert cleared["response_id"]
    assert metrics["interrupted"] and metrics["barge_in_ms"] is not None and metrics["barge_in_ms"] > 0
    assert np.abs(after).max() == 0  # the track went silent: the queued speech was flushed
    session = engine.sessions[0]
    full = engine.reply.format(seconds=0.0).split(" ")
    played_text = session.interrupted_with[-1]
    assert 0 < len(played_text.split(" ")) < len(full)
    assert session.history[-1] == ("assistant", played_text)
    done = [e for e in h.events if e["type"] == "response.done"]
    assert done[-1]["response"]["status"] in ("cancelled", "completed")


async def test_manual_turns_and_client_errors(worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray) -> None:
    h = Harness(ToneEngine(), worker, vad, SessionConfig(turn=TurnConfig(silence_ms=700)))
    await h.start()
    try:
        h.session.handle_client_event('{"type": "session.update", "session": {"turn_detection": null}}')
        await h.wait_for("session.updated")
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        await h.wait_for("input_audio_buffer.speech_stopped")
        assert "response.created" not in h.types()
        h.session.handle_client_event("{oops")
        err = await h.wait_for("error")
        assert err["error"]["code"] == "invalid_json"
        h.session.handle_client_event({"type": "response.cancel"})
        err = await h.wait_for(lambda e: e["type"] == "error" and e is not err)
        assert err["error"]["code"] == "response_cancel_not_active"
        h.session.handle_client_event({"type": "response.create"})
        await h.wait_for("conversation.item.input_audio_transcription.completed")
        await h.wait_for("response.done")
    finally:
        await h.close()


async def test_close_cancels_every_task_and_closes_the_engine_session(
    worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = ToneEngine(step_delay=0.2)
    h = Harness(engine, worker, vad)
    await h.start()
    await h.feed(speech16k, realtime=False)
    await h.silence(1.0, realtime=False)
    await h.wait_for("response.output_text.delta")  # close in the middle of a reply
    tasks = h.session.tasks
    await h.close()
    assert tasks and all(t.done() for t in tasks) and not h.session.tasks
    assert engine.open_sessions == 0 and engine.sessions[0].closed


async def test_failing_engine_ends_only_its_session(
    worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    class Broken(ToneEngine):
        def open_session(self, **kw: object):  # type: ignore[no-untyped-def,override]
            s = super().open_session()
            s.push_audio = lambda pcm, ts: (_ for _ in ()).throw(RuntimeError("engine exploded"))  # type: ignore
            return s

    failures: list[BaseException] = []
    bad = Harness(Broken(), worker, vad)
    bad.session.on_failure = failures.append
    good = Harness(ToneEngine(), worker, vad)
    await bad.start()
    await good.start()
    try:
        await bad.feed(speech16k[:32000], realtime=False)
        err = await bad.wait_for("error")
        assert "engine exploded" in err["error"]["message"] and failures
        await good.feed(speech16k, realtime=False)
        await good.silence(1.0, realtime=False)
        await good.wait_for("response.done")
    finally:
        await bad.close()
        await good.close()


async def test_close_right_after_start_leaves_no_coroutine_unawaited(worker: DeviceWorker, vad: SileroVad) -> None:
    """`omni desktop` closes its session at once when the sound device fails to open: the session's loops were
    cancelled before they ever ran and each one warned 'coroutine ... was never awaited'."""
    h = Harness(ToneEngine(), worker, vad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await h.session.start()
        await h.session.close()  # no await in between: the loops' tasks have not taken a step yet
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
