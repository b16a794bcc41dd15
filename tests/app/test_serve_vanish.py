"""The idle watchdog of `omni serve`: a client that vanishes without closing its peer connection (no DTLS
close_notify, no SCTP ABORT, no hang-up) is torn down after `idle_timeout` seconds without microphone RTP,
while a connected client that only sends silence stays. No timed assertions: waits are on conditions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection

import omni.app.serve
import omni.app.server_app
import omni.app.shutdown
from benchmarks.rtc_client import RealtimeClient
from omni.app.cli import build_parser
from omni.app.realtime_server import IDLE_TIMEOUT, Connection, ServeOptions, Server
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_loopback import live_session_tasks, wait_until

IDLE = 1.5  # the test's idle timeout (seconds)


def ice_protocols(pc: RTCPeerConnection) -> list[Any]:
    """The aioice UDP protocols under every transport of a peer connection (one with BUNDLE)."""
    ice_transports = {id(t.receiver.transport.transport): t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        ice_transports[id(pc.sctp.transport.transport)] = pc.sctp.transport.transport
    protocols: list[Any] = []
    for ice in ice_transports.values():
        protocols += ice._connection._protocols
    assert protocols, "no ICE sockets found: the client is not connected"
    return protocols


def vanish(client: RealtimeClient) -> None:
    """The client disappears as a killed tab would: its microphone stops producing frames, and its sockets
    neither send (RTP, RTCP, STUN consent answers, DTLS, SCTP) nor hear anything. Nothing announces it."""
    silenced_mic(client)
    for proto in ice_protocols(client.pc):

        async def send_data(data: bytes, addr: tuple[str, int]) -> None:
            return None

        proto.send_data = send_data
        proto.send_stun = lambda message, addr: None
        proto.datagram_received = lambda data, addr: None


def silenced_mic(client: RealtimeClient) -> None:
    """The microphone track stops producing frames (its sender then sends no RTP), the network stays up."""

    async def never() -> av.AudioFrame:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    client.mic.recv = never  # type: ignore[method-assign]


async def timed_out_count(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("omni_sessions_timed_out_total "):
            return float(line.split()[1])
    return 0.0


async def assert_torn_down(server: Server, engine: ToneEngine, conn: Connection) -> None:
    """The same checks as the vanishing-client test of test_serve_loopback."""
    out_track = conn.out_track
    await wait_until(lambda: not server.connections and not live_session_tasks())
    await wait_until(lambda: conn.closed and conn.session is not None and conn.session.closed)
    assert engine.open_sessions == 0
    assert out_track is not None and out_track.readyState == "ended"
    assert conn.pc.connectionState == "closed"


async def assert_still_serves(url: str, server: Server) -> None:
    client = RealtimeClient(url)
    try:
        await client.connect()
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
    finally:
        await client.close()
    assert done["response"]["status"] == "completed"
    await wait_until(lambda: not server.connections and not live_session_tasks())


async def test_vanished_client_is_torn_down_after_the_idle_timeout(
    start_server: StartServer, speech48k: np.ndarray
) -> None:
    engine = ToneEngine(step_delay=0.2)
    url, server = await start_server(engine, idle_timeout=IDLE)
    client = RealtimeClient(url)
    try:
        await client.connect()
        client.mic.say(speech48k)
        await client.wait_for("response.output_text.delta")  # mid-reply, like the hang-up test
        conn = next(iter(server.connections.values()))
        assert conn.close_reason is None and conn.channel is not None
        seen_before = len(client.events)
        vanish(client)
        t_vanish = time.monotonic()
        await wait_until(lambda: conn.close_reason is not None, limit=25.0)  # well before ICE consent (~30 s)
        print(f"\nvanished client closed {time.monotonic() - t_vanish:.2f} s later: {conn.close_reason}")
        # the watchdog, not a close from the client, ended the call: teardown keeps the first reason, and the
        # channel-close and connection-state handlers would have given theirs
        assert conn.close_reason is not None and conn.close_reason.startswith("no microphone audio (RTP)")
        await assert_torn_down(server, engine, conn)
        assert await timed_out_count(url) == 1
        assert "error" not in client.types()[seen_before:]  # the black hole held: nothing reached the client
    finally:
        await client.close()
    await assert_still_serves(url, server)
    assert await timed_out_count(url) == 1


async def test_mic_without_rtp_is_idle_and_told_why(start_server: StartServer) -> None:
    """The network stays up (ICE consent answered, data channel open) but the microphone sends no RTP: the
    call is idle; the client gets an `error` event naming the reason, then the channel closes."""
    engine = ToneEngine()
    url, server = await start_server(engine, idle_timeout=IDLE)
    client = RealtimeClient(url)
    closed = asyncio.Event()
    try:
        await client.connect()
        client.channel.on("close", closed.set)
        await client.wait_for("session.created")
        conn = next(iter(server.connections.values()))
        silenced_mic(client)
        err = await client.wait_for("error", limit=25.0)
        await asyncio.wait_for(closed.wait(), 25.0)
        await assert_torn_down(server, engine, conn)
    finally:
        await client.close()
    assert err["error"]["code"] == "idle_timeout"
    assert conn.close_reason is not None and conn.close_reason.startswith("no microphone audio (RTP)")
    assert await timed_out_count(url) == 1
    await assert_still_serves(url, server)


async def test_silence_keeps_the_call_alive(start_server: StartServer) -> None:
    """Silence (what a muted browser track sends) is not idleness: packets keep arriving."""
    engine = ToneEngine()
    url, server = await start_server(engine, idle_timeout=IDLE)
    client = RealtimeClient(url)
    try:
        await client.connect()
        conn = next(iter(server.connections.values()))
        # the mic sends only silence; wait until the watchdog has counted 4 idle timeouts' worth of packets
        await wait_until(lambda: conn.audio_packets > 4 * IDLE * 50 or conn.closed, limit=60.0)
        assert not conn.closed and conn.close_reason is None
        assert server.connections == {conn.id: conn}
        assert await timed_out_count(url) == 0
        client.send({"type": "response.create"})
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    finally:
        await client.close()
    await wait_until(lambda: not server.connections and not live_session_tasks())
    assert conn.close_reason is not None and "RTP" not in conn.close_reason


def test_idle_timeout_flag_reaches_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["serve"]).idle_timeout == IDLE_TIMEOUT == 10.0
    seen: list[ServeOptions] = []

    def fake_build_app(engine: object, options: ServeOptions) -> None:
        seen.append(options)

    async def fake_serve(*args: object) -> None:
        return None

    monkeypatch.setattr(omni.app.server_app, "build_app", fake_build_app)
    monkeypatch.setattr(omni.app.shutdown, "serve", fake_serve)
    args = build_parser().parse_args(["serve", "--engine", "test", "--idle-timeout", "2.5"])
    assert omni.app.serve.run(args) == 0
    assert seen[0].idle_timeout == 2.5


def test_negative_idle_timeout_is_refused() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "test", "--idle-timeout", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "--idle-timeout must be >= 0" in r.stderr
