"""`input_audio_buffer.clear` on the WebRTC path (audio on the track, events on the data channel) through the
frames-in/frames-out harness: the same `Session` step as on the WebSocket (tests/app/test_realtime_ws.py)."""

from __future__ import annotations

import numpy as np

from omni.streaming.engines.tone import ToneEngine
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.app.test_serve_loopback import wait_until
from tests.streaming.harness import Harness


async def test_clear_mid_speech_forgets_the_turn_and_the_next_one_is_heard_alone(
    worker: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    """Server VAD: the user is mid-sentence (the detector opened a turn, the engine has its audio) when the client
    clears; the engine's open turn is taken back and the detector starts over, so the silence after it ends no
    turn, and the next spoken turn is answered as itself (the engine heard it alone)."""
    engine = ToneEngine()
    h = Harness(engine, worker, vad)
    await h.start()
    try:
        await h.feed(speech16k[: int(len(speech16k) * 0.6)], realtime=False)
        await h.wait_for("input_audio_buffer.speech_started")
        await wait_until(lambda: engine.sessions[-1].heard_samples > 8000)  # the turn's audio is in the engine
        h.session.handle_client_event({"type": "input_audio_buffer.clear"})
        await h.wait_for("input_audio_buffer.cleared")
        await h.silence(1.5, realtime=False)
        n_stopped = h.types().count("input_audio_buffer.speech_stopped")
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        heard = await h.wait_for("conversation.item.input_audio_transcription.completed")
        await h.wait_for("response.done")
    finally:
        await h.close()
    session = engine.sessions[-1]
    assert session.discarded_samples > 8000
    assert n_stopped == 0  # the cleared turn never ended: it was forgotten
    assert h.types().count("response.created") == 1
    spoken = len(speech16k) / 16000
    # the answered turn is the second utterance (with the detector's prefix padding and silence tail), not both
    assert spoken - 0.1 < heard["usage"]["seconds"] < spoken + 1.2, (heard, spoken)
    engine_heard = float(heard["transcript"].removeprefix("(spoke for ").removesuffix(" s)"))
    assert spoken - 0.1 < engine_heard < spoken + 1.2, (heard, spoken)
