"""Property-based fuzzing of WebRTC signaling against a live `omni serve` on loopback (hypothesis): mutations
of a real SDP offer (lines dropped, duplicated, cut, replaced, inserted; values rewritten) POSTed to
/v1/realtime/calls while a second call talks beside them.

Invariants: every answer is 201 or a 4xx/503 with a readable message (never a 500), the server logs no
traceback, every call the fuzz opened is hung up again, and the call beside them still answers. Fixed seed and
a bounded example count, as in tests/streaming/test_fuzz.py; OMNI_FUZZ_EXAMPLES (e.g. 2000) runs longer."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.rtc_client import RealtimeClient, ScriptedMic
from omni.app.limits import Limits
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_loopback import wait_until
from tests.streaming.fuzz_cases import FUZZ

# Lines a hostile or buggy client might put in an offer (addresses: loopback only).
SDP_JUNK = [
    "v=1", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 0 RTP/AVP 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=rtpmap:111 nonsense/48000/2", "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 VP8/90000", "a=fmtp:111 x=" + "9" * 300,
    "a=candidate:1 1 udp 1 127.0.0.1 9 typ host", "a=candidate:x", "a=fingerprint:sha-256 00", "a=fingerprint:",
    "a=setup:bogus", "a=ice-ufrag:", "a=ice-pwd:" + "p" * 2000, "a=mid:" + "x" * 300, "c=IN IP4 999.1.1.1",
    "a=ssrc:4294967296 cname:x", "a=sctp-port:99999999", "a=max-message-size:-1", "a=group:BUNDLE 0 1 2 3 4 5",
    "a=extmap:999 urn:x", "a=msid:- -", "a=sendonly", "a=inactive", "a=rtcp-mux", "a=ssrc-group:FID 1", "o=- 0 0",
]


def mutated(base: str) -> st.SearchStrategy[tuple[str, str]]:
    lines = base.strip().split("\r\n")
    idx = st.integers(0, len(lines) - 1)
    junk = st.one_of(st.sampled_from(SDP_JUNK), st.text(max_size=60),
                     st.text(alphabet=st.characters(min_codepoint=0x80), max_size=20))
    op = st.one_of(
        st.tuples(st.just("drop"), idx, st.just("")),
        st.tuples(st.just("dup"), idx, st.just("")),
        st.tuples(st.just("cut"), idx, st.integers(0, 30).map(str)),
        st.tuples(st.just("replace"), idx, junk),
        st.tuples(st.just("insert"), idx, junk),
        st.tuples(st.just("value"), idx, junk),
    )

    def apply(ops: list[tuple[str, int, str]]) -> str:
        out = list(lines)
        for kind, i, arg in ops:
            i %= max(1, len(out))
            if not out:
                break
            if kind == "drop":
                del out[i]
            elif kind == "dup":
                out.insert(i, out[i])
            elif kind == "cut":
                out[i] = out[i][: int(arg)]
            elif kind == "replace":
                out[i] = arg
            elif kind == "insert":
                out.insert(i, arg)
            else:  # keep the line's key, rewrite what follows its ':' (or '=')
                sep = ":" if ":" in out[i] else "="
                out[i] = out[i].split(sep, 1)[0] + sep + arg
        return "\r\n".join(out) + "\r\n"

    ctype = st.sampled_from(["application/sdp"] * 4 + ["application/json", "text/plain"])
    return st.tuples(st.lists(op, min_size=1, max_size=6).map(apply), ctype)


async def real_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTrack(ScriptedMic())
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


async def test_mutated_offers_get_clear_answers_and_spare_the_call_beside(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ToneEngine()
    limits = Limits(connects_per_minute=1e6, connect_burst=10**6, max_pending=64, max_sessions=64)
    url, server = await start_server(engine, limits=limits)
    offers: list[tuple[str, str]] = []

    @FUZZ
    @given(mutated(await real_offer()))
    def collect(case: tuple[str, str]) -> None:
        offers.append(case)

    collect()
    beside = RealtimeClient(url)
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.WARNING):
        await beside.connect()
        await beside.wait_for("session.created")
        async with aiohttp.ClientSession() as http:
            for sdp, ctype in offers:
                body = json.dumps({"type": "offer", "sdp": sdp}) if ctype == "application/json" else sdp
                async with http.post(f"{url}/v1/realtime/calls", data=body.encode("utf-8", "surrogatepass"),
                                     headers={"Content-Type": ctype}) as r:
                    text = await r.text()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 201:
                        assert text.startswith("v=0")
                        headers = {"X-Omni-Call-Secret": r.headers["X-Omni-Call-Secret"]}
                        async with http.delete(f"{url}{r.headers['Location']}", headers=headers) as d:
                            assert d.status == 204
                    else:
                        assert r.status in (400, 413, 415), (r.status, text, sdp)
                        assert len(text.strip()) > 10, (r.status, text)
        n = len(beside.events)
        beside.send({"type": "response.create"})
        done = await beside.wait_for("response.done", start=n)
        assert done["response"]["status"] == "completed"
        await wait_until(lambda: len(server.connections) == 1)  # the fuzz's calls are gone, the one beside stays
        await beside.close()
    print(f"{len(offers)} mutated offers: answers by status {statuses}")
    assert statuses.get(400, 0) > 0, statuses  # the mutations did reach the checks
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
