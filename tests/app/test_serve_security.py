"""Auth, origins, limits and the probe findings of issue 16, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from benchmarks.rtc_client import RealtimeClient
from omni.app.auth import AuthConfig
from omni.app.limits import Limits
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_bad_input import offer_sdp
from tests.app.test_serve_loopback import wait_until

KEY = "sk-test-0123456789abcdef"
SDP = {"Content-Type": "application/sdp"}


async def request(method: str, url: str, body: str = "", **headers: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=body, headers=headers) as r:
            return r.status, dict(r.headers), await r.text()


async def metric(url: str, name: str, key: str | None = None) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    _, _, text = await request("GET", f"{url}/metrics", **headers)
    for ln in text.splitlines():
        if ln.startswith(f"omni_{name} "):
            return float(ln.split()[1])
    return 0.0


async def test_offers_that_never_connect_open_no_engine_session_and_are_capped(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, server = await start_server(engine, limits=Limits(max_pending=3))
    sdp = await offer_sdp()
    statuses = []
    for _ in range(4):
        status, headers, body = await request("POST", f"{url}/v1/realtime/calls", sdp, **SDP)
        statuses.append(status)
    assert statuses == [201, 201, 201, 503]
    assert json.loads(body)["error"]["code"] == "max_pending" and int(headers["Retry-After"]) > 0
    assert engine.sessions == [] and len(server.connections) == 3  # no engine state for unconnected offers
    assert await metric(url, "limit_max_pending_refusals_total") == 1


async def test_max_sessions_answers_503_and_a_connected_call_opens_its_session(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, _ = await start_server(engine, limits=Limits(max_sessions=1))
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        assert len(engine.sessions) == 1
        status, headers, body = await request("POST", f"{url}/v1/realtime/calls", await offer_sdp(),
                                              **{"Content-Type": "application/sdp"})
        assert status == 503 and "Retry-After" in headers and json.loads(body)["error"]["code"] == "max_sessions"
    finally:
        await client.close()


async def test_auth_keys_client_secrets_and_hangup(start_server: StartServer) -> None:
    auth = AuthConfig(keys={KEY: "alice"})
    url, server = await start_server(ToneEngine(), auth=auth)
    sdp = await offer_sdp()
    ctype = {"Content-Type": "application/sdp"}
    assert (await request("POST", f"{url}/v1/realtime/calls", sdp, **ctype))[0] == 401
    assert (await request("POST", f"{url}/v1/realtime/calls", sdp, **ctype, Authorization="Bearer sk-wrong"))[0] == 401
    assert (await request("GET", f"{url}/metrics"))[0] == 401
    assert (await request("GET", f"{url}/"))[0] == 200  # the demo page itself is public
    status, _, body = await request("POST", f"{url}/v1/realtime/client_secrets", "", Authorization=f"Bearer {KEY}")
    secret = json.loads(body)
    assert status == 200 and secret["value"].startswith("ek_") and secret["expires_at"] > 0
    # an ephemeral key opens calls for the same user, but cannot mint more keys
    refused = await request("POST", f"{url}/v1/realtime/client_secrets", "", Authorization=f"Bearer {secret['value']}")
    assert refused[0] == 401
    client = RealtimeClient(url, api_key=secret["value"])
    try:
        await client.connect()
        await client.wait_for("session.created")
        conn = next(iter(server.connections.values()))
        assert conn.user_id == "alice" and conn.session is not None and conn.session.config.user_id == "alice"
        assert client.call_url is not None
        # knowing the call id is not enough to hang up someone's call
        assert (await request("DELETE", url + client.call_url))[0] == 401
        assert (await request("DELETE", url + client.call_url, **{"X-Omni-Call-Secret": "nope"}))[0] == 404
        assert (await request("DELETE", url + client.call_url, Authorization=f"Bearer {KEY}"))[0] == 204
    finally:
        await client.close()
    assert not server.connections


async def test_hangup_without_auth_needs_the_call_secret(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine())
    client = RealtimeClient(url)
    try:
        await client.connect()
        assert client.call_url is not None and client.call_secret
        assert (await request("DELETE", url + client.call_url))[0] == 404
        assert server.connections
        secret = {"X-Omni-Call-Secret": client.call_secret}
        assert (await request("DELETE", url + client.call_url, **secret))[0] == 204
    finally:
        await client.close()


async def test_cross_origin_posts_are_refused_unless_allowed(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), auth=AuthConfig(allow_origins=["https://app.example.com"]))
    sdp = await offer_sdp()
    ctype = {"Content-Type": "application/sdp"}
    status, _, body = await request("POST", f"{url}/v1/realtime/calls", sdp, **ctype, Origin="https://evil.example")
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert (await request("POST", f"{url}/v1/realtime/calls", sdp, **ctype, Origin="https://app.example.com"))[0] == 201
    assert (await request("POST", f"{url}/v1/realtime/calls", sdp, **ctype, Origin=url))[0] == 201  # same origin


async def test_offer_with_too_many_candidates_is_refused(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), limits=Limits(max_candidates=4))
    sdp = await offer_sdp()
    extra = "".join(f"a=candidate:{i} 1 udp 1 10.0.{i // 250}.{i % 250} 9 typ host\r\n" for i in range(2000))
    sdp = sdp.replace("a=mid:0\r\n", "a=mid:0\r\n" + extra, 1)
    status, _, body = await request("POST", f"{url}/v1/realtime/calls", sdp, **{"Content-Type": "application/sdp"})
    assert status == 400 and "ICE candidates" in body


async def test_connect_rate_per_client_address(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), limits=Limits(connects_per_minute=1, connect_burst=2))
    statuses = [(await request("POST", f"{url}/v1/realtime/calls", "hello"))[0] for _ in range(3)]
    assert statuses[:2] == [400, 400] and statuses[2] == 429


async def test_data_channel_abuse_gets_error_events_and_the_call_survives(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=Limits(max_message_bytes=64 * 1024))
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")

        async def error_after(raw: str) -> dict[str, object]:
            n = len(client.events)
            client.channel.send(raw)
            return (await client.wait_for("error", start=n))["error"]  # type: ignore[return-value]

        assert (await error_after("[" * 20000 + "]" * 20000))["code"] in ("invalid_json", "invalid_event")
        assert (await error_after("x" * 100000))["code"] == "message_too_large"
        big_id = json.dumps({"type": "no.such", "event_id": "e" * 60000})
        assert "event_id" in str((await error_after(big_id))["message"])
        bad = {"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "threshold": 1.0}}}
        assert "threshold" in str((await error_after(json.dumps(bad)))["message"])
        long = json.dumps({"type": "session.update", "session": {"instructions": "ü" * 20000}}, ensure_ascii=False)
        err = await error_after(long)
        assert err["code"] == "invalid_value" and "instructions" in str(err["message"])
        client.send({"type": "response.create"})  # still usable
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    finally:
        await client.close()


async def test_oversized_server_event_is_refused_not_fatal(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine(seconds_per_char=0.01))
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        conn = next(iter(server.connections.values()))
        n = len(client.events)
        conn.send_event({"type": "omni.test", "blob": "x" * 400_000})  # over the peer's 256 KiB limit
        assert (await client.wait_for("error", start=n))["error"]["code"] == "event_too_large"
        client.send({"type": "response.create"})
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    finally:
        await client.close()


async def test_half_open_connection_is_closed(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), limits=Limits(request_timeout=0.5))
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nv=0")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)  # the server answers 408 and closes instead of waiting forever
    writer.close()
    assert b"408" in data.split(b"\r\n", 1)[0]


async def test_session_minutes_limit_closes_the_call(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine(), limits=Limits(max_session_minutes=1 / 60))
    client = RealtimeClient(url)
    try:
        await client.connect()
        err = await client.wait_for("error")
        assert err["error"]["code"] == "session_expired"
        await wait_until(lambda: not server.connections)
    finally:
        await client.close()


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--host", "0.0.0.0", "--api-key", "short"]])
def test_exposed_bind_without_a_key_refuses_to_start(argv: list[str]) -> None:
    from omni.app.cli import build_parser
    from omni.app.deploy_args import deploy_settings

    args = build_parser().parse_args(["serve", *argv])
    with pytest.raises(ValueError, match="--api-key"):
        deploy_settings(args)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--insecure"])
    assert not deploy_settings(args)[0].enabled
