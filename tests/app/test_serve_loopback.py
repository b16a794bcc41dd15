"""Loopback WebRTC: an aiortc client talks to `omni serve` on 127.0.0.1 (tone engine)."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np

from benchmarks.rtc_client import RealtimeClient
from benchmarks.ws_client import invalid_events, response_order_problems
from omni.app.realtime_server import Connection
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.session import Session
from tests.app.conftest import StartServer


def live_session_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("sess_", "rtc_"))]


async def wait_until(pred: object, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def test_speech_in_reply_text_and_audio_out(start_server: StartServer, speech48k: np.ndarray) -> None:
    """Over WebRTC with the GA signaling form (`sdp` + `session`); every data-channel event parses as the
    official SDK's typed server event, in the protocol's order per response."""
    engine = ToneEngine()
    url, server = await start_server(engine)
    client = RealtimeClient(url)
    try:
        await client.connect(session={"type": "realtime", "instructions": "Answer in French."})
        await client.wait_for("session.created")  # the channel can open before its first message lands
        assert client.events[0]["type"] == "session.created"
        client.mic.say(speech48k)
        await client.wait_for("input_audio_buffer.speech_started")
        await client.wait_for("input_audio_buffer.speech_stopped")
        await client.wait_for("conversation.item.input_audio_transcription.completed")
        await client.wait_for("response.created")
        t_reply = time.monotonic()
        done = await client.wait_for("response.done")
        metrics = await client.wait_for("omni.metrics")
        await wait_until(lambda: client.loud_since(t_reply) > 25)  # > 0.5 s of the spoken reply arrived
        await client.wait_for("output_audio_buffer.stopped")
    finally:
        await client.close()
    assert invalid_events(client.events) == [] and response_order_problems(client.events) == []
    assert engine.sessions[-1].instructions == "Answer in French."  # from the form's session field
    text = "".join(e["delta"] for e in client.events if e["type"] == "response.output_text.delta")
    assert text.startswith("Hello, I heard you speak for")
    assert done["response"]["status"] == "completed"
    assert metrics["end_of_speech_to_first_audio_ms"] > 0 and metrics["real_time_factor"] is not None
    print(f"\nloopback turn: {metrics}")


async def test_barge_in_mid_reply_stops_the_audio(start_server: StartServer, speech48k: np.ndarray) -> None:
    engine = ToneEngine(step_delay=0.15)  # about 2.3 s to generate, 4 s to play
    url, server = await start_server(engine)
    client = RealtimeClient(url)
    try:
        await client.connect()
        client.mic.say(speech48k)
        await client.wait_for("output_audio_buffer.started")
        await asyncio.sleep(0.8)
        n = len(client.events)
        client.mic.say(speech48k)  # talk over the reply
        await client.wait_for("input_audio_buffer.speech_started", start=n)
        cleared = await client.wait_for("output_audio_buffer.cleared", start=n)
        metrics = await client.wait_for("omni.metrics", start=n)
        t_cleared = time.monotonic()
        await asyncio.sleep(1.0)
        # after the jitter buffer drains (well under 0.5 s on loopback) nothing loud arrives any more
        late = client.loud_since(t_cleared + 0.5)
    finally:
        await client.close()
    assert cleared["response_id"] and metrics["interrupted"] and metrics["barge_in_ms"] > 0
    assert late == 0
    session = engine.sessions[-1]
    assert session.interrupted_with and session.history[-1] == ("assistant", session.interrupted_with[-1])
    assert len(session.interrupted_with[-1]) < len(engine.reply)
    print(f"\nbarge-in: {metrics['barge_in_ms']} ms from speech onset to silence on the server")


async def test_client_vanishing_mid_reply_leaves_nothing_behind(
    start_server: StartServer, speech48k: np.ndarray
) -> None:
    engine = ToneEngine(step_delay=0.2)
    url, server = await start_server(engine)
    client = RealtimeClient(url)
    await client.connect()
    client.mic.say(speech48k)
    await client.wait_for("response.output_text.delta")
    conn = next(iter(server.connections.values()))
    out_track = conn.out_track
    await client.pc.close()  # gone, mid-reply
    await wait_until(lambda: not server.connections and not live_session_tasks())
    await wait_until(lambda: conn.closed and conn.session is not None and conn.session.closed)
    assert engine.open_sessions == 0
    assert out_track is not None and out_track.readyState == "ended"
    assert conn.pc.connectionState == "closed"


async def test_twenty_sequential_sessions_leave_memory_flat(start_server: StartServer) -> None:
    engine = ToneEngine(seconds_per_char=0.01)
    url, server = await start_server(engine)

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        return kb / 1024

    samples = []
    for i in range(20):
        client = RealtimeClient(url)
        await client.connect()
        client.send({"type": "response.create"})
        await client.wait_for("response.done")
        await client.close()
        await wait_until(lambda: not server.connections and not live_session_tasks())
        if i in (4, 19):
            gc.collect()
            samples.append(rss_mb())
    gc.collect()
    leftovers = [o for o in gc.get_objects() if type(o) in (Session, Connection)]
    print(f"\nRSS after session 5: {samples[0]:.1f} MB, after session 20: {samples[1]:.1f} MB")
    assert leftovers == []
    assert engine.open_sessions == 0
    assert samples[1] - samples[0] < 40.0, samples  # flat: noise is a few MB, a leak of sessions is far more


async def test_a_typed_turn_over_the_event_channel(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine())
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        content = [{"type": "input_text", "text": "Hello from the keyboard"}]
        item = {"type": "message", "role": "user", "content": content}
        client.send({"type": "conversation.item.create", "item": item})
        added = await client.wait_for("conversation.item.added")
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
    finally:
        await client.close()
    assert added["item"]["content"] == content
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == "You wrote: Hello from the keyboard"
