"""The per-address HTTP connection cap of `omni serve` (a real child process on loopback): half-open connections
that send nothing cannot use up the server, the one over the cap gets an immediate 503 and is closed, the cap
frees as connections close, and /metrics counts both. ~1,100 half-open connections once used up every file
descriptor and blocked all new calls."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from benchmarks.rtc_client import RealtimeClient
from tests.app.test_serve_cli import free_port
from tests.app.test_serve_shutdown import start, wait_exit

CAP = 5


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_connections_per_address_are_capped() -> None:
    port = free_port()
    proc = start(port, "--max-connections-per-address", str(CAP), "--request-timeout", "120")
    url = f"http://127.0.0.1:{port}"
    held: list[asyncio.StreamWriter] = []
    client = RealtimeClient(url)
    try:
        for _ in range(CAP):  # half-open: connected, never a byte sent (the request timeout is far away)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 30)  # read to EOF: the server closes it
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), reply
        assert b"Retry-After:" in head
        assert json.loads(body)["error"]["code"] == "too_many_connections"

        for w in held[:2]:  # two leave: a call (offer POST) and /metrics fit again
            w.close()
        del held[:2]
        await client.connect()
        await client.wait_for("session.created")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert metric(text, "omni_limit_connections_per_address_refusals_total") == 1
        assert CAP - 2 < metric(text, "omni_http_connections_open") <= CAP
    finally:
        await client.close()
        for w in held:
            w.close()
        proc.terminate()
        await wait_exit(proc)
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr
    assert "refused a connection from 127.0.0.1: 5 connections already open" in stderr
