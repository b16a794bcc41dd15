"""Bad offers get 400 with a reason, and the server keeps serving other calls."""

from __future__ import annotations

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from benchmarks.rtc_client import RealtimeClient
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer


async def post(url: str, body: str | bytes, ctype: str = "application/sdp") -> tuple[int, str]:
    """The status, and a refusal's message (every refusal is a Realtime-style JSON error object, as the other routes'
    are; code invalid_offer for a 400)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/realtime/calls", data=body, headers={"Content-Type": ctype}) as r:
            if r.status == 201:
                return r.status, await r.text()
            assert r.content_type == "application/json", (r.status, await r.text())
            error = (await r.json())["error"]
            assert error["type"] == "invalid_request_error" and (r.status != 400 or error["code"] == "invalid_offer")
            return r.status, str(error["message"])


async def offer_sdp(audio: bool = True, video: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if audio:
            pc.addTransceiver("audio", direction="sendrecv")
        if video:
            pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.parametrize(
    ("body", "ctype", "reason"),
    [
        ("hello", "application/sdp", 'must start with "v=0"'),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "application/sdp", "no media sections"),
        ("{not json", "application/json", "malformed JSON"),
        ('{"sdp": 5}', "application/json", 'string field "sdp"'),
        ("v=0", "text/plain", "Content-Type must be application/sdp"),
        (b"\xff\xfe", "application/sdp", "not UTF-8"),
    ],
)
async def test_malformed_offers_get_400_with_a_reason(
    start_server: StartServer, body: str | bytes, ctype: str, reason: str
) -> None:
    url, _ = await start_server(ToneEngine())
    status, text = await post(url, body, ctype)
    assert status == 400 and reason in text


async def test_a_bad_offer_type_is_named_without_echoing_it_whole(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine())
    status, text = await post(url, '{"type": "' + "x" * 200_000 + '", "sdp": "v=0"}', "application/json")
    assert status == 400 and 'JSON field "type" must be "offer"' in text and len(text) < 1_000


async def test_offer_without_audio_is_refused_clearly(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine())
    status, text = await post(url, await offer_sdp(audio=False, video=True))
    assert status == 400 and "no audio track" in text
    assert not server.connections


async def test_unsupported_codec_is_refused_clearly(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine())
    sdp = await offer_sdp()
    lines = []
    for ln in sdp.splitlines():  # keep only a G722 codec in the audio section
        if ln.startswith("m=audio"):
            parts = ln.split(" ")
            ln = " ".join(parts[:3] + ["9"])
        elif ln.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and "9 " not in ln.split(":", 1)[1][:2]:
            continue
        lines.append(ln)
    sdp = "\r\n".join(lines).replace("a=mid:0", "a=rtpmap:9 G722/8000\r\na=mid:0", 1) + "\r\n"
    status, text = await post(url, sdp)
    assert status == 400 and "unsupported audio codec" in text and "g722" in text
    assert not server.connections


async def test_mangled_sdp_that_looks_valid_is_refused(start_server: StartServer) -> None:
    url, _ = await start_server(ToneEngine())
    sdp = "\r\n".join(ln for ln in (await offer_sdp()).splitlines() if not ln.startswith("a=ice-pwd")) + "\r\n"
    status, text = await post(url, sdp)
    assert status == 400 and "cannot use this SDP offer" in text


async def test_bad_events_get_error_events_and_the_server_keeps_serving(start_server: StartServer) -> None:
    url, server = await start_server(ToneEngine(seconds_per_char=0.01))
    assert (await post(url, "garbage"))[0] == 400
    client = RealtimeClient(url)
    try:
        await client.connect()
        client.channel.send("{not json")
        err = await client.wait_for("error")
        assert err["error"]["code"] == "invalid_json"
        client.send({"type": "no.such.event"})
        err2 = await client.wait_for(lambda e: e["type"] == "error" and e is not err)
        assert "no.such.event" in err2["error"]["message"]
        client.send({"type": "response.create"})  # the session still works
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
        assert "omni_offers_rejected_total 1" in text and "omni_sessions_active 1" in text
    finally:
        await client.close()
