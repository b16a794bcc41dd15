"""SIGTERM and SIGINT shut `omni serve` down gracefully (a real child process); a second signal exits at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from benchmarks.rtc_client import RealtimeClient
from benchmarks.ws_client import WsRealtimeClient
from tests.app.test_serve_cli import free_port


def start(port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "test", "--port", str(port),
         "--ice-host", "127.0.0.1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server listens
    assert f"127.0.0.1:{port}" in line, line
    return proc


async def wait_exit(proc: subprocess.Popen[str], limit: float = 60.0) -> int:
    return await asyncio.to_thread(proc.wait, limit)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_tells_clients_and_exits_0(sig: signal.Signals) -> None:
    port = free_port()
    proc = start(port, "--drain-seconds", "20", "--test-step-delay", "0.05")
    client = RealtimeClient(f"http://127.0.0.1:{port}")
    try:
        await client.connect()
        await client.wait_for("session.created")
        client.send({"type": "response.create"})  # a reply in flight: generated before the exit
        await client.wait_for("response.created")
        proc.send_signal(sig)
        err = await client.wait_for("error")
        assert err["error"]["code"] == "server_shutting_down"
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert await wait_exit(proc) == 0
    finally:
        await client.close()
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr and "shutting down" in stderr
    # objects frozen at startup (gc.freeze) are freed before the interpreter ends: Triton's bindings
    # otherwise print ~30 lines of "nanobind: leaked ..." after every clean exit
    assert "leaked" not in stderr


async def test_second_signal_exits_at_once() -> None:
    port = free_port()
    proc = start(port, "--drain-seconds", "300", "--test-step-delay", "1.0")
    client = RealtimeClient(f"http://127.0.0.1:{port}")
    try:
        await client.connect()
        await client.wait_for("session.created")
        client.send({"type": "response.create"})  # a slow reply: the drain would wait for it
        await client.wait_for("response.created")
        proc.send_signal(signal.SIGTERM)
        await client.wait_for("error")
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 1
    finally:
        await client.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def test_signal_tells_websocket_clients_drains_their_replies_and_refuses_new_ones() -> None:
    """The same drain for a Realtime WebSocket session (the official SDK client): told with the same error, its
    reply in flight finished, new upgrades refused with 503 while draining, then closed 1001 (going away)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(port, "--drain-seconds", "20", "--test-step-delay", "0.05")
    client = WsRealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        await client.send({"type": "response.create"})  # a reply in flight: generated before the exit
        await client.wait_for("response.created")
        proc.send_signal(signal.SIGTERM)
        err = await client.wait_for("error")
        assert err["error"]["code"] == "server_shutting_down"
        async with aiohttp.ClientSession() as http:  # still draining: the reply is not done yet
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"ws://127.0.0.1:{port}/v1/realtime")
        assert refused.value.status == 503
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert client.events.index(err) < client.events.index(done)
        assert await wait_exit(proc) == 0
        assert client.conn is not None
        assert client.conn._connection.close_code == 1001  # type: ignore[attr-defined]
    finally:
        await client.close()
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr and "shutting down" in stderr
