"""The Realtime WebSocket route (/v1/realtime) has the WebRTC signaling route's protections, against a real server
on 127.0.0.1: origin check and keys before the upgrade, the same admission (draining, --max-sessions counted
across both transports, connect rate), every message through the same size and rate gate, and the session
duration limit. Graceful shutdown of sockets is in test_serve_shutdown.py (a real child process)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from benchmarks.ws_client import WsRealtimeClient
from omni.app.auth import AuthConfig
from omni.app.limits import Limits
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_bad_input import offer_sdp
from tests.app.test_serve_loopback import wait_until
from tests.app.test_serve_security import KEY, metric, request

TEXT_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is this"}]}


class Socket:
    """A raw aiohttp WebSocket to /v1/realtime (any headers), keeping every event it reads."""

    def __init__(self, url: str, **headers: str) -> None:
        self.url = url.replace("http://", "ws://", 1) + "/v1/realtime"
        self.headers = headers
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Socket:
        self.http = aiohttp.ClientSession()
        try:
            self.ws = await self.http.ws_connect(self.url, headers=self.headers)
        except BaseException:
            await self.http.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        assert self.http is not None
        await self.http.close()

    async def next_of(self, kind: str | tuple[str, ...], limit: float = 30.0) -> dict[str, Any]:
        """The next event of type `kind` (or of one of these types); earlier ones are kept in `events`.
        AssertionError if the socket ends first."""
        kinds = (kind,) if isinstance(kind, str) else kind
        assert self.ws is not None
        while True:
            msg = await self.ws.receive(limit)
            assert msg.type == WSMsgType.TEXT, f"socket ended ({msg.type}, close code {self.ws.close_code})"
            event = json.loads(msg.data)
            self.events.append(event)
            if event["type"] in kinds:
                return event

    async def send(self, event: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send_str(event if isinstance(event, str) else json.dumps(event))


async def refused(url: str, **headers: str) -> aiohttp.WSServerHandshakeError:
    """The handshake error of an upgrade the server refuses (the test fails if it is accepted)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with Socket(url, **headers):
            pass
    return info.value


async def test_cross_origin_upgrade_is_refused_before_any_session(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, server = await start_server(engine, auth=AuthConfig(allow_origins=["https://app.example.com"]))
    assert (await refused(url, Origin="https://evil.example")).status == 403
    assert engine.sessions == [] and not server.sockets  # refused before the upgrade: no session was opened
    for origin in ("https://app.example.com", url):  # allowed by --allow-origin; the server's own page
        async with Socket(url, Origin=origin) as s:
            await s.next_of("session.created")
    async with Socket(url) as s:  # no Origin: not a browser page (SDKs, curl)
        await s.next_of("session.created")


async def test_upgrade_needs_a_key_when_keys_are_on(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, server = await start_server(engine, auth=AuthConfig(keys={KEY: "alice"}))
    assert (await refused(url)).status == 401
    assert (await refused(url, Authorization="Bearer sk-wrong-0123456789")).status == 401
    assert engine.sessions == []
    _, _, body = await request("POST", f"{url}/v1/realtime/client_secrets", "", Authorization=f"Bearer {KEY}")
    for key in (KEY, json.loads(body)["value"]):  # a server key, or a client secret minted with it
        client = WsRealtimeClient(url, api_key=key)  # the official SDK's connect, Authorization: Bearer
        try:
            await client.connect()
            await client.wait_for("session.created")
            (call,) = server.sockets.values()
            assert call.session is not None and call.session.config.user_id == "alice"
        finally:
            await client.close()


async def test_a_browser_offers_its_key_as_a_subprotocol(start_server: StartServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A browser's WebSocket cannot send Authorization: with `new WebSocket(url, ["realtime",
    "openai-insecure-api-key." + key])` (OpenAI's convention) a server key or a client secret opens the session
    and `realtime` is echoed (never the key); a wrong key is refused with 401 before any session, a key without
    `realtime` beside it with 400; no key reaches the server's logs. The client: the SDK's `websockets` package."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    caplog.set_level(logging.DEBUG)
    page = "https://app.example.com"
    engine = ToneEngine()
    url, server = await start_server(engine, auth=AuthConfig(keys={KEY: "alice"}, allow_origins=[page]))
    ws_url = url.replace("http://", "ws://", 1) + "/v1/realtime?model=gpt-realtime"
    _, _, body = await request("POST", f"{url}/v1/realtime/client_secrets", "", Authorization=f"Bearer {KEY}")
    secret = json.loads(body)["value"]
    for key in (KEY, secret):
        async with connect(ws_url, subprotocols=["realtime", f"openai-insecure-api-key.{key}"],  # type: ignore[list-item]
                           origin=page) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            assert ws.response is not None and ws.response.headers["Sec-WebSocket-Protocol"] == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
            (call,) = server.sockets.values()
            assert call.session is not None and call.session.config.user_id == "alice"
        await wait_until(lambda: not server.sockets)
    statuses = []
    for offered in (["realtime", "openai-insecure-api-key.sk-wrong-0123456789"], ["realtime"],
                    [f"openai-insecure-api-key.{KEY}"]):
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url, subprotocols=offered, origin=page):  # type: ignore[arg-type]
                pass
        statuses.append(info.value.response.status_code)
    assert statuses == [401, 401, 400]
    assert len(engine.sessions) == 2  # the refused ones opened none
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")]
    assert server_side and not [m for m in server_side if KEY in m or secret in m]  # (the client logs its own)


async def test_max_sessions_counts_sockets_and_calls_alike(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, server = await start_server(engine, limits=Limits(max_sessions=1))
    async with Socket(url) as s:
        await s.next_of("session.created")
        err = await refused(url)
        assert err.status == 503 and int(err.headers["Retry-After"]) > 0  # type: ignore[index]
        status, _, body = await request("POST", f"{url}/v1/realtime/calls", await offer_sdp(),
                                        **{"Content-Type": "application/sdp"})
        assert status == 503 and json.loads(body)["error"]["code"] == "max_sessions"
        assert len(engine.sessions) == 1
    await wait_until(lambda: not server.sockets)
    async with Socket(url) as s:  # the slot is free again
        await s.next_of("session.created")
    assert await metric(url, "limit_max_sessions_refusals_total") == 2


async def test_connect_rate_and_draining_refuse_upgrades(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine(), limits=Limits(connects_per_minute=1, connect_burst=2))
    for _ in range(2):
        async with Socket(url) as s:
            await s.next_of("session.created")
    err = await refused(url)
    assert err.status == 429 and int(err.headers["Retry-After"]) > 0  # type: ignore[index]
    url, server = await start_server(ToneEngine())
    server.draining = True  # what omni.app.shutdown.drain sets first; the signal path is in test_serve_shutdown.py
    assert (await refused(url)).status == 503
    assert await metric(url, "limit_draining_refusals_total") == 1


async def test_event_rate_gets_error_events_and_the_session_survives(start_server: StartServer) -> None:
    limits = Limits(messages_per_second=1, message_burst=4)
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=limits)
    async with Socket(url) as s:
        await s.next_of("session.created")
        for _ in range(30):  # far beyond 1 per second with bursts of 4
            await s.send({"type": "input_audio_buffer.clear"})
        answers: list[dict[str, Any]] = []
        while len(answers) < 30:  # each one is either done (cleared) or refused (an error), none lost
            answers.append(await s.next_of(("input_audio_buffer.cleared", "error")))
        refusals = [e["error"]["code"] for e in answers if e["type"] == "error"]
        assert refusals and set(refusals) == {"rate_limited"}
        assert len(refusals) >= 20  # 4 in the burst, and one more for each second the 30 took to arrive
        await asyncio.sleep(1.5)  # a token comes back: the session is still usable
        await s.send({"type": "response.create"})
        done = await s.next_of("response.done")
        assert done["response"]["status"] == "completed"
    assert await metric(url, "limit_message_rate_refusals_total") == len(refusals)


async def test_oversized_message_gets_an_error_event_and_the_session_survives(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=Limits(max_ws_message_bytes=64 * 1024))
    async with Socket(url) as s:
        await s.next_of("session.created")
        await s.send(json.dumps({"type": "input_audio_buffer.clear", "pad": "x" * 100_000}))  # under the ceiling
        err = (await s.next_of("error"))["error"]
        assert err["code"] == "message_too_large" and "65536" in err["message"]
        await s.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await s.send({"type": "response.create"})
        assert (await s.next_of("response.done"))["response"]["status"] == "completed"
        await s.send("x" * 200_000)  # beyond twice the limit: aiohttp closes the socket rather than buffer it
        assert s.ws is not None
        msg = await s.ws.receive(30)
        while msg.type == WSMsgType.TEXT:
            msg = await s.ws.receive(30)
        assert s.ws.close_code == 1009
    assert await metric(url, "limit_message_size_refusals_total") == 1


async def test_session_minutes_limit_closes_the_socket(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine(), limits=Limits(max_session_minutes=1 / 60))
    async with Socket(url) as s:
        await s.next_of("session.created")
        err = await s.next_of("error", limit=60)
        assert err["error"]["code"] == "session_expired"
        assert s.ws is not None
        msg = await s.ws.receive(30)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and s.ws.close_code == 1000
    await wait_until(lambda: not server.sockets)
    assert await metric(url, "limit_session_minutes_refusals_total") == 1
