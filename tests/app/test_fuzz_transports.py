"""Property-based fuzzing of client events over both real transports against a live `omni serve` on loopback:
the WebRTC data channel (/v1/realtime/calls) and the WebSocket (/v1/realtime), with a session on the other
transport talking beside the fuzzed one.

The cases are tests/streaming/fuzz_cases.py's (each field of each event with hostile values: NaN/Infinity
literals, 1e308, huge and negative integers, 10,000-deep nesting, NUL, RTL marks, emoji, lone surrogates) plus
messages near and over the message limit (ASCII, and 4-byte characters that pass a character count but not
the byte count) and, on the data channel, bytes that are not UTF-8. Invariants: each bad event is answered by
an `error` event naming the field (`error.param`) or, for a message that is no event at all, saying why; no
answer echoes a client's huge value; no traceback is logged; the fuzzed session still replies and the one
beside it sees no error. Fixed seed and a bounded example count; OMNI_FUZZ_EXAMPLES (e.g. 2000) runs longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any, Protocol

import av
import pytest
from aiortc import VideoStreamTrack
from aiortc.rtcsctptransport import DATA_CHANNEL_OPEN, WEBRTC_DCEP, WEBRTC_STRING
from hypothesis import given

from benchmarks.rtc_client import RealtimeClient
from benchmarks.ws_client import WsRealtimeClient
from omni.app.limits import Limits
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.streaming.fuzz_cases import DEEP, FUZZ, UNPARSABLE, Expect, field_cases, refused

LIMIT = 64 * 1024  # both transports' message limit here, so "near" and "over" mean the same on each
LIMITS = Limits(max_message_bytes=LIMIT, max_ws_message_bytes=LIMIT, messages_per_second=1e6, message_burst=10**6,
                appends_per_second=1e6, append_burst=10**6)
TOO_LARGE = Expect(False, "", "message_too_large")
NOT_UTF8 = b'{"type": "session.update", "session": {"instructions": "\xff\xfe\xed\xa0\x80"}}'


def sized_cases() -> list[tuple[str, Expect]]:
    """Messages just under and over LIMIT bytes, and whole-message nesting bombs."""
    def update(instructions: str) -> str:
        return json.dumps({"type": "session.update", "session": {"instructions": instructions}}, ensure_ascii=False)

    overhead = len(update(""))
    return [
        (update("x" * (LIMIT - overhead)), refused("session.instructions")),  # exactly the limit: parsed
        (update("x" * (LIMIT - overhead + 1)), TOO_LARGE),
        (update("x" * (LIMIT * 3 // 2)), TOO_LARGE),
        (update("\U0001f600" * (LIMIT // 4 - 10)), TOO_LARGE),  # under the limit in characters, over in bytes
        (update("\U0001f600" * (LIMIT // 8)), refused("session.instructions")),
        (json.dumps({"type": "x" * (LIMIT - 100)}), refused("type")),  # echoed: the answer must stay small
        (json.dumps({"type": "response.cancel", "event_id": "e" * (LIMIT - 100)}), refused("event_id")),
        (json.dumps({"type": "response.create", "response": {"output_modalities": ["x" * (LIMIT - 200)]}}),
         refused("response.output_modalities")),
        ("[" * DEEP + "]" * DEEP, UNPARSABLE),
        ('{"a":' * DEEP + "1" + "}" * DEEP, UNPARSABLE),
        ('{"type": "session.update", "session": ' + "[" * DEEP + "]" * DEEP + "}", UNPARSABLE),
        ('{"type": "session.update", "session": {"instructions": "a\\u0000b\\u202e\\ud83d\\ude00"}}', Expect(True)),
        ('{"type": "session.update", "session": {"omni": {"user_id": "\\ud800"}}}', refused("session.omni.user_id")),
        ('{"type": "session.update", "session": {"instructions": "a\\udfffb"}}', refused("session.instructions")),
    ]


class Client(Protocol):
    events: list[dict[str, Any]]

    async def wait_for(self, pred: Any, limit: float = 30.0, start: int = 0) -> dict[str, Any]: ...


async def send_raw(client: Client, raw: str | bytes) -> None:
    if isinstance(client, WsRealtimeClient):
        assert isinstance(raw, str)
        await client.send_raw(raw)
    else:
        assert isinstance(client, RealtimeClient)
        if isinstance(raw, str):
            client.channel.send(raw)
        else:  # bytes sent as a string message (PPID 51) that is not UTF-8: what a buggy or hostile peer can do
            sctp = client.pc.sctp
            sctp._data_channel_queue.append((client.channel, WEBRTC_STRING, raw))
            await sctp._data_channel_flush()


async def answers(client: Client, raw: str | bytes, n: int) -> list[dict[str, Any]]:
    """The errors that answer `raw`: sent, then a sentinel (an unknown event with an event_id) whose own error
    marks the end of the answers (protocol errors are answered at once, in order)."""
    start = len(client.events)
    await send_raw(client, raw)
    sentinel = f"sentinel_{n}"
    await send_raw(client, json.dumps({"type": "omni.fuzz.sentinel", "event_id": sentinel}))
    end = await client.wait_for(lambda e: e["type"] == "error" and e["error"].get("event_id") == sentinel,
                                start=start)
    got = client.events[start:client.events.index(end)]
    return [e for e in got if e["type"] == "error"]


def problem(raw: str | bytes, want: Expect, errors: list[dict[str, Any]]) -> str | None:
    for e in errors:
        size = len(json.dumps(e))
        if size > 2000:
            return f"an error of {size} bytes echoes the client's value: {json.dumps(e)[:200]}"
    if want.accepted:
        return None
    for e in errors:
        err = e["error"]
        if (not want.code or err["code"] == want.code) and err.get("param", "") == want.param and err["message"]:
            return None
    return f"no error with code {want.code or '*'} and param {want.param!r}; got {[e['error'] for e in errors]}"


async def connect(kind: str, url: str) -> Client:
    if kind == "webrtc":
        rtc = RealtimeClient(url)
        await rtc.connect()
        await rtc.wait_for("session.created")
        return rtc
    ws = WsRealtimeClient(url)
    await ws.connect()
    await ws.wait_for("session.created")
    return ws


async def send(client: Client, event: dict[str, Any]) -> None:
    await send_raw(client, json.dumps(event))


async def replies(client: Client, fuzzed: bool) -> None:
    """The session answers a typed question with a completed reply (after cancelling any the fuzz started)."""
    if fuzzed:
        await send(client, {"type": "response.cancel"})
    await send(client, {"type": "session.update", "session": {"turn_detection": None}})
    n = len(client.events)
    await send(client, {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "still there?"}]}})
    await send(client, {"type": "response.create"})
    done = await client.wait_for(lambda e: e["type"] == "response.done" and e["response"]["status"] == "completed",
                                 start=n)
    assert done["response"]["output"]


async def close(client: Client) -> None:
    await client.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_fuzzed_events_are_answered_naming_the_field_on_both_transports(
    transport: str, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    url, server = await start_server(ToneEngine(seconds_per_char=0.002), limits=LIMITS)
    cases: list[tuple[str | bytes, Expect]] = [*sized_cases()]
    if transport == "webrtc":
        cases.append((NOT_UTF8, Expect(False, "", "invalid_json")))

    @FUZZ
    @given(field_cases())
    def collect(case: tuple[str, Expect]) -> None:
        cases.append(case)

    collect()
    wrong = []
    with caplog.at_level(logging.WARNING):
        fuzzed = await connect(transport, url)
        beside = await connect("websocket" if transport == "webrtc" else "webrtc", url)
        try:
            for n, (raw, want) in enumerate(cases):
                why = problem(raw, want, await answers(fuzzed, raw, n))
                if why is not None:
                    wrong.append(f"{raw[:120]!r}: {why}")
            await replies(fuzzed, True)
            await replies(beside, False)
            assert [e for e in beside.events if e["type"] == "error"] == []
            assert len(server.connections) + len(server.sockets) == 2
        finally:
            await close(fuzzed)
            await close(beside)
    assert not wrong, "\n".join(wrong)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks
    print(f"{transport}: {len(cases)} hostile events answered")


class OddVideo(VideoStreamTrack):
    """A camera whose frames change to odd sizes and pixel formats every frame (1x1, 3x5, 641x3, ...)."""

    SIZES = [(1, 1), (3, 5), (641, 3), (2, 4097), (17, 9), (640, 480)]
    FORMATS = ["yuv420p", "rgb24", "gray", "nv12"]

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        w, h = self.SIZES[self.sent % len(self.SIZES)]
        frame = av.VideoFrame(w, h, self.FORMATS[self.sent % len(self.FORMATS)])
        for plane in frame.planes:
            plane.update(bytes([self.sent % 256]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.sent += 1
        return frame


async def test_odd_video_over_webrtc_spares_the_session(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Video frames of odd sizes and formats through a real VP8 track: the server decodes and scales them on the
    media worker; the call goes on replying and nothing logs a traceback."""
    engine = ToneEngine(seconds_per_char=0.002)
    url, server = await start_server(engine, video_interval=0.05)
    client = RealtimeClient(url)
    video = OddVideo()
    client.pc.addTrack(video)
    with caplog.at_level(logging.WARNING):
        try:
            await client.connect()
            await client.wait_for("session.created")
            for _ in range(600):
                if engine.sessions and engine.sessions[-1].video_frames >= 6 or video.sent > 120:
                    break
                await asyncio.sleep(0.05)
            await replies(client, True)
            assert len(server.connections) == 1
        finally:
            await client.close()
    assert engine.sessions[-1].video_frames >= 6, (video.sent, engine.sessions[-1].video_frames)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks


async def test_a_second_channel_open_on_a_live_stream_spares_the_call(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A channel-open handshake (DCEP) for the stream already open tripped an `assert` in aiortc's receive task,
    which killed the call's DTLS transport; now one warning line, and the call goes on."""
    url, server = await start_server(ToneEngine(seconds_per_char=0.002))
    client = RealtimeClient(url)
    label = b"oai-events"
    dcep_open = struct.pack("!BBHLHH", DATA_CHANNEL_OPEN, 0, 0, 0, len(label), 0) + label
    with caplog.at_level(logging.WARNING):
        try:
            await client.connect()
            await client.wait_for("session.created")
            sctp = client.pc.sctp
            sctp._data_channel_queue.append((client.channel, WEBRTC_DCEP, dcep_open))
            await sctp._data_channel_flush()
            await replies(client, True)
            assert len(server.connections) == 1
        finally:
            await client.close()
    assert any("dropped a malformed data-channel message" in r.getMessage() for r in caplog.records)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks
