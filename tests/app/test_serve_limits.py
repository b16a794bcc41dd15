"""Limits the audit found untested, against a real server on 127.0.0.1: the event rate on WebRTC's data channel,
body size (413) and the m-line cap, 503 while draining, client-secret expiry, keys never logged, the
instructions-length and body-size counters in /metrics, and `RateLimitedLog`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from benchmarks.rtc_client import RealtimeClient
from omni.app.auth import AuthConfig
from omni.app.limits import Limits, RateLimitedLog
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_bad_input import offer_sdp
from tests.app.test_serve_security import KEY, SDP, metric, request
from tests.app.test_ws_security import Socket, refused


async def test_event_rate_on_the_data_channel_gets_errors_and_the_call_survives(start_server: StartServer) -> None:
    limits = Limits(messages_per_second=1, message_burst=3)
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=limits)
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        for _ in range(20):  # far beyond 1 per second with bursts of 3
            client.channel.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await client.wait_for(lambda _: sum(e["type"] in ("error", "input_audio_buffer.cleared")
                                          for e in client.events) == 20)
        refusals = [e["error"]["code"] for e in client.events if e["type"] == "error"]
        assert set(refusals) == {"rate_limited"} and len(refusals) >= 10
        await asyncio.sleep(1.5)  # a token comes back: the call is still usable
        client.send({"type": "response.create"})
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    finally:
        await client.close()
    assert await metric(url, "limit_message_rate_refusals_total") == len(refusals)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1024):
        yield data[i : i + 1024]


async def test_body_over_the_limit_is_413_and_counted(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), limits=Limits(max_body_bytes=4096))
    sdp = await offer_sdp()
    big = sdp + "a=x-pad:" + "x" * 8000 + "\r\n"
    status, _, body = await request("POST", f"{url}/v1/realtime/calls", big, **SDP)  # Content-Length
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/realtime/calls", data=chunks(big.encode()), headers=SDP) as r:  # chunked
            assert r.status == 413 and (await r.json())["error"]["code"] == "body_too_large"
        form = aiohttp.FormData()
        form.add_field("sdp", big)
        form.add_field("session", json.dumps({"type": "realtime"}))
        async with http.post(f"{url}/v1/realtime/calls", data=form) as r:  # the GA multipart form
            assert r.status == 413 and (await r.json())["error"]["code"] == "body_too_large"
    assert (await request("POST", f"{url}/v1/realtime/calls", sdp, **SDP))[0] == 201  # under the limit
    assert await metric(url, "limit_body_size_refusals_total") == 3


async def test_offer_with_too_many_media_sections_is_refused(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine())
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for _ in range(9):  # one over the 8 m-lines accepted
            pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    status, _, body = await request("POST", f"{url}/v1/realtime/calls", sdp, **SDP)
    assert status == 400 and "9 media sections" in body
    assert await metric(url, "limit_sdp_refusals_total") == 1


async def test_offers_get_503_while_draining(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine())
    server.draining = True  # what omni.app.shutdown.drain sets first (the signal path: test_serve_shutdown.py)
    status, headers, body = await request("POST", f"{url}/v1/realtime/calls", await offer_sdp(), **SDP)
    assert status == 503 and int(headers["Retry-After"]) > 0
    assert json.loads(body)["error"]["code"] == "server_shutting_down"


async def test_an_expired_client_secret_is_refused(start_server: StartServer) -> None:
    auth = AuthConfig(keys={KEY: "alice"})
    url, _ = await start_server(ToneEngine(), auth=auth)
    body = json.dumps({"expires_after": {"anchor": "created_at", "seconds": 10}})
    before = time.time()
    status, _, text = await request("POST", f"{url}/v1/realtime/client_secrets", body, Authorization=f"Bearer {KEY}",
                                    **{"Content-Type": "application/json"})
    after = time.time()
    secret = json.loads(text)
    # created between `before` and `after`, expiring 10 s later (whole seconds): no bound on how long the call took
    assert status == 200 and int(before + 10) <= secret["expires_at"] <= after + 10
    bearer = {"Authorization": f"Bearer {secret['value']}"}
    async with Socket(url, **bearer) as s:  # valid now
        await s.next_of("session.created")
    auth.ephemeral[secret["value"]] = ("alice", time.time() - 1)  # its 10 s are over (not waited for)
    assert (await refused(url, **bearer)).status == 401
    assert (await request("POST", f"{url}/v1/realtime/calls", await offer_sdp(), **SDP, **bearer))[0] == 401
    assert secret["value"] not in auth.ephemeral  # forgotten once expired


async def test_a_client_secrets_body_that_is_not_a_json_object_is_refused(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine())
    for body in ('"str"', "[1]", "5", "{bad"):
        status, _, text = await request("POST", f"{url}/v1/realtime/client_secrets", body,
                                        **{"Content-Type": "application/json"})
        assert status == 400 and json.loads(text)["error"]["code"] == "invalid_json", body
    for body in ("", "null", "{}"):  # empty bodies still get the default lifetime
        assert (await request("POST", f"{url}/v1/realtime/client_secrets", body,
                              **{"Content-Type": "application/json"}))[0] == 200, body


async def test_keys_never_appear_in_logs(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url, _ = await start_server(ToneEngine(), auth=AuthConfig(keys={KEY: "alice"}))
    wrong = "sk-wrong-key-0123456789"
    assert (await request("POST", f"{url}/v1/realtime/calls", "v=0", **SDP, Authorization=f"Bearer {wrong}"))[0] == 401
    _, _, text = await request("POST", f"{url}/v1/realtime/client_secrets", "", Authorization=f"Bearer {KEY}")
    secret = json.loads(text)["value"]
    client = RealtimeClient(url, api_key=secret)
    try:
        await client.connect()
        await client.wait_for("session.created")
    finally:
        await client.close()
    async with Socket(url, Authorization=f"Bearer {KEY}") as s:
        await s.next_of("session.created")
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert len(caplog.records) > 0  # the server did log (access lines, call life cycle)
    for key in (KEY, wrong, secret):
        assert key not in logged


async def test_instructions_over_the_limit_are_counted(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine(), limits=Limits(max_instructions_chars=100))
    async with Socket(url) as s:
        await s.next_of("session.created")
        await s.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x" * 101}})
        err = (await s.next_of("error"))["error"]
        assert err["code"] == "invalid_value" and "instructions" in err["message"]
        await s.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x" * 100}})
        await s.next_of("session.updated")
    assert await metric(url, "limit_instructions_refusals_total") == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_rate_limited_log_holds_back_a_flood_and_says_how_much(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("omni.app.limits.time", clock)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("omni.test.ratelimited")
    logger.propagate = False
    handler = Keep()
    handler.addFilter(RateLimitedLog(burst=3, window=10.0))
    logger.addHandler(handler)
    try:
        for i in range(10):
            logger.warning("refused a connection from %s", f"10.0.0.{i}")
        logger.warning("another template")  # counted on its own
        assert [r.getMessage() for r in records] == [
            "refused a connection from 10.0.0.0", "refused a connection from 10.0.0.1",
            "refused a connection from 10.0.0.2", "another template",
        ]
        clock.now += 10.0  # the window is over: the next line passes and says what was held back
        logger.warning("refused a connection from %s", "10.0.0.99")
        assert records[-1].getMessage() == (
            "refused a connection from 10.0.0.99 [7 similar lines held back in the last 10 s]"
        )
    finally:
        logger.removeHandler(handler)


def test_event_burst_follows_the_rate_flag() -> None:
    """`--events-per-second 1` once kept the fixed burst of 200, so 30 events in a second got no error."""
    from omni.app.cli import build_parser
    from omni.app.deploy_args import deploy_settings

    _, limits = deploy_settings(build_parser().parse_args(["serve", "--events-per-second", "1"]))
    assert limits.messages_per_second == 1 and limits.message_burst == 4
    _, limits = deploy_settings(build_parser().parse_args(["serve", "--max-ws-message-kb", "64"]))
    assert limits.message_burst == Limits().message_burst == 200 and limits.max_ws_message_bytes == 64 * 1024


async def test_concurrent_offers_cannot_all_pass_the_caps(start_server: StartServer) -> None:
    """Offers admitted together, before any is answered, count towards --max-pending and --max-sessions at once
    (a caller could otherwise open any number of peer connections by sending them all at the same time)."""
    url, server = await start_server(ToneEngine(), limits=Limits(max_pending=2))
    sdp = await offer_sdp()
    results = await asyncio.gather(*(request("POST", f"{url}/v1/realtime/calls", sdp, **SDP) for _ in range(6)))
    assert sorted(status for status, _, _ in results) == [201, 201, 503, 503, 503, 503]
    assert len(server.connections) == 2
