"""Connect/disconnect churn of the Realtime WebSocket API through a real server on loopback: every socket's
server-side objects (its WsCall, Session, engine session, socket and tasks) are freed when the socket ends,
by the server itself, whether the client closes politely, closes mid-reply, or vanishes (TCP gone, no close frame).

As in test_serve_churn.py, CPython's automatic collection is off, so only the server's own collection after each
teardown (`Server.release_garbage`) can free what reference cycles hold. Counts of objects, not RSS or time."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

import omni.app.realtime_ws as realtime_ws
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_realtime_ws import TEXT_ITEM, connect
from tests.app.test_serve_loopback import wait_until

SOCKETS = 7  # ends with a polite close (see the test's docstring)


async def test_sockets_are_freed_when_they_end(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vanished client's socket stays reachable from aiohttp's connection for a while after its handler ended
    (measured: still held 12 s later, even through a full collection), so the collection at its own teardown
    cannot free it; the next socket's teardown does. Hence the churn ends with a polite close, and every socket,
    vanished ones included, must be freed by then."""
    calls: list[realtime_ws.WsCall] = []
    init = realtime_ws.WsCall.__init__

    def record(self: realtime_ws.WsCall, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        calls.append(self)

    monkeypatch.setattr(realtime_ws.WsCall, "__init__", record)
    engine = ToneEngine(step_delay=0.05)
    url, server = await start_server(engine)
    refs: list[weakref.ref[Any]] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(SOCKETS):
            client = await connect(url)
            (call,) = calls
            calls.clear()
            session = call.session
            assert session is not None
            objects: list[Any] = [call, session, call.ws, call.outbox]  # ToneEngine keeps its sessions: not here
            objects += [t for t in asyncio.all_tasks() if t.get_name().startswith(call.id)]
            refs += [weakref.ref(o) for o in objects if o is not None]
            del call, session, objects
            if i % 3 != 0:  # mid-reply
                await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
                await client.send({"type": "response.create"})
                await client.wait_for("response.output_audio.delta")
            if i % 3 == 2:  # the client vanishes: TCP gone, no close frame
                assert client.conn is not None
                client.conn._connection.transport.abort()  # type: ignore[attr-defined]
            await client.close()
            await wait_until(lambda: engine.open_sessions == 0
                             and "omni_ws_connections_active 0" in server.metrics.render())
            await asyncio.sleep(0)  # the handler returns after its gauge update
        alive = sorted({type(r()).__name__ for r in refs if r() is not None})
        assert not alive, f"objects of ended sockets still alive: {alive}"
    finally:
        gc.enable()
    assert engine.open_sessions == 0
    assert server.metrics.counters["gc_runs_total"][1] >= SOCKETS
