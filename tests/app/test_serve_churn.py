"""Connect/disconnect churn through a real `omni serve` on loopback: every call's objects are freed when the
call ends, by the server itself, whether the client hangs up, closes its peer connection, or vanishes.

A closed call is a web of reference cycles (aiortc's peer connection and transports, our Connection and
Session); the server collects them after each teardown (omni.app.realtime_server: `release_garbage`). The test turns
CPython's automatic collection off, so only the server's own collection can free them: before that existed,
500 cycles of benchmarks/soak.py churn grew RSS by ~47-61 KB per cycle. Counts of objects, not RSS or time."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import aiohttp

from benchmarks.rtc_client import RealtimeClient
from omni.app.realtime_server import Server
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_loopback import live_session_tasks, wait_until
from tests.app.test_serve_vanish import vanish

CALLS = 6


def call_objects(server: Server) -> list[Any]:
    """The server-side objects of the one open call: Connection, Session, peer connection, its transports
    and tracks, the event channel."""
    (conn,) = server.connections.values()
    pc = conn.pc
    objects = [conn, conn.session, pc, conn.out_track, conn.channel, pc.sctp]
    for t in pc.getTransceivers():
        objects += [t, t.receiver, t.sender, t.receiver.track, t.receiver.transport, t.receiver.transport.transport]
    return [o for o in objects if o is not None]


async def end_call(client: RealtimeClient, i: int) -> None:
    if i % 3 == 0:  # a polite hang-up: DELETE with the call's secret, then the peer connection closes
        async with aiohttp.ClientSession() as http:
            headers = {"X-Omni-Call-Secret": client.call_secret or ""}
            async with http.delete(f"{client.base_url}{client.call_url}", headers=headers) as r:
                assert r.status == 204
        await client.close()
    elif i % 3 == 1:  # the client closes its peer connection (DTLS close_notify may or may not arrive first)
        await client.close()
    else:  # the client vanishes without a word: the idle watchdog reaps the call
        vanish(client)


async def test_calls_are_freed_when_they_end(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, server = await start_server(engine, idle_timeout=1.5)
    refs: list[weakref.ref[Any]] = []
    clients: list[RealtimeClient] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(CALLS):
            client = RealtimeClient(url)
            clients.append(client)
            await client.connect()
            await client.wait_for("session.created")
            refs += [weakref.ref(o) for o in call_objects(server)]
            await end_call(client, i)
            await wait_until(lambda: not server.connections and not server._tasks and not live_session_tasks())
        alive = sorted({type(r()).__name__ for r in refs if r() is not None})
        assert not alive, f"objects of ended calls still alive: {alive}"
    finally:
        gc.enable()
        for c in clients:
            await c.close()
    assert engine.open_sessions == 0
    assert server.metrics.gauges["connections_active"][1] == 0
    assert server.metrics.counters["gc_runs_total"][1] >= CALLS
    assert len(server.connect_rate._buckets) == 1  # one client address, one bucket
