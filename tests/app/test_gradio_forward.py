"""The Gradio page's forwarder (omni/app/gradio_page.py) against a recording stand-in for the omni server: which
headers cross it each way, the offer's query, the key `omni ui --api-key` adds, and pages of other origins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

pytest.importorskip("gradio", reason="gradio is not installed (the ui extra: pip install -e '.[ui]')")

from omni.app.gradio_page import UiServer

Seen = list[dict[str, Any]]
Start = Callable[[str | None], Awaitable[tuple[str, Seen]]]
UPSTREAM_HEADERS = {"Location": "/v1/realtime/calls/rtc_1", "X-Omni-Call-Secret": "s3cret", "Retry-After": "5",
                    "X-Internal-Note": "not for browsers", "Set-Cookie": "upstream=1"}


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """A stand-in omni server that records each request and answers with `UPSTREAM_HEADERS`, and the page's
    server in front of it (given `api_key`); returns (the page's URL, the recorded requests)."""
    runners: list[web.AppRunner] = []
    pages: list[UiServer] = []

    async def start_(api_key: str | None) -> tuple[str, Seen]:
        seen: Seen = []

        async def record(request: web.Request) -> web.Response:
            seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                         "headers": {k.lower(): v for k, v in request.headers.items()}, "body": await request.read()})
            return web.Response(status=201, text="v=0\r\n", content_type="application/sdp", headers=UPSTREAM_HEADERS)

        app = web.Application()
        app.router.add_route("*", "/v1/realtime/{tail:.*}", record)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        page = UiServer(f"http://127.0.0.1:{runner.addresses[0][1]}", api_key=api_key)
        pages.append(page)
        return page.start(), seen

    yield start_
    for p in pages:
        p.stop()
    for r in runners:
        await r.cleanup()


async def test_only_the_protocols_headers_cross_the_forwarder_each_way(start: Start) -> None:
    url, seen = await start(None)
    sent = {"Content-Type": "application/sdp", "Authorization": "Bearer ek_abc", "X-Omni-Call-Secret": "given",
            "Cookie": "session=browser", "X-Forwarded-For": "10.0.0.9", "Origin": url}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/realtime/calls?user_id=alice", data=b"offer", headers=sent) as r:
            offer = (r.status, r.headers.copy(), await r.text())  # (case-insensitive)
        async with http.delete(f"{url}/v1/realtime/calls/rtc_1", headers={"X-Omni-Call-Secret": "s3cret"}) as r:
            hangup = r.status
        async with http.post(f"{url}/v1/realtime/client_secrets", headers={"Authorization": "Bearer sk-x"}) as r:
            secrets = r.status
    status, headers, body = offer
    assert status == 201 and body == "v=0\r\n"
    assert headers["Location"] == "/v1/realtime/calls/rtc_1" and headers["X-Omni-Call-Secret"] == "s3cret"
    assert headers["Retry-After"] == "5" and "X-Internal-Note" not in headers and "Set-Cookie" not in headers
    got = seen[0]["headers"]
    assert (got["content-type"], got["authorization"], got["x-omni-call-secret"]) == (
        "application/sdp", "Bearer ek_abc", "given")
    assert not {"cookie", "x-forwarded-for", "origin"} & set(got), got
    assert seen[0]["query"] == {"user_id": "alice"} and seen[0]["body"] == b"offer"
    assert hangup == 201 and seen[1]["method"] == "DELETE" and seen[1]["path"] == "/v1/realtime/calls/rtc_1"
    assert seen[1]["headers"]["x-omni-call-secret"] == "s3cret" and "authorization" not in seen[1]["headers"]
    assert secrets == 201 and seen[2]["path"] == "/v1/realtime/client_secrets"
    assert seen[2]["headers"]["authorization"] == "Bearer sk-x"


async def test_omni_ui_api_key_is_sent_for_the_browser_and_other_origins_are_refused(start: Start) -> None:
    url, seen = await start("sk-held-by-the-page-server")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/realtime/calls", data=b"offer") as r:
            assert r.status == 201
        async with http.post(f"{url}/v1/realtime/calls", data=b"offer", headers={"Authorization": "Bearer ek_1"}) as r:
            assert r.status == 201
        async with http.post(f"{url}/v1/realtime/calls", data=b"offer",
                             headers={"Origin": "http://evil.example"}) as r:
            foreign = (r.status, await r.text())
    assert seen[0]["headers"]["authorization"] == "Bearer sk-held-by-the-page-server"
    assert seen[1]["headers"]["authorization"] == "Bearer ek_1"  # the browser's own credential wins
    assert foreign[0] == 403 and "http://evil.example" in foreign[1]
    assert len(seen) == 2  # the foreign page's request never reached the omni server
