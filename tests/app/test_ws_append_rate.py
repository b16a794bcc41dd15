"""`input_audio_buffer.append` on the WebSocket route has a rate bucket of its own (--appends-per-second), apart
from --events-per-second: a client streaming audio in 20 ms pieces (50 appends a second, the SDK's usual
cadence) never trips either limit nor uses up the other events' budget, while a flood of 1-sample appends is
still bounded, each refusal an `error` event and counted in /metrics. Against a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from omni.app.limits import Limits, MessageGate
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.metrics import ServerMetrics
from tests.app.conftest import StartServer
from tests.app.test_serve_security import metric
from tests.app.test_ws_security import TEXT_ITEM, Socket

PIECE_20MS = base64.b64encode(np.zeros(480, "<i2").tobytes()).decode()  # 20 ms of silence at 24 kHz
ONE_SAMPLE = base64.b64encode(b"\x00\x00").decode()


async def answers_until_sentinel(s: Socket, n: int) -> list[dict[str, Any]]:
    """Every event up to the error that answers the sentinel `n` (an unknown event type with event_id)."""
    await s.send({"type": "omni.sentinel", "event_id": f"sentinel_{n}"})
    out = []
    while True:
        e = await s.next_of(("error", "input_audio_buffer.cleared"))
        if e["type"] == "error" and e["error"].get("event_id") == f"sentinel_{n}":
            return out
        out.append(e)


async def test_streaming_appends_trip_no_limit_and_leave_the_event_budget(start_server: StartServer) -> None:
    """300 appends (6 s of 20 ms pieces) with 30 other events among them, sent at once: both buckets' bursts
    hold them (under the old single bucket of 200, 130 of them were refused)."""
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=Limits())
    async with Socket(url) as s:
        await s.next_of("session.created")
        await s.send({"type": "session.update", "session": {"turn_detection": None}})
        await s.next_of("session.updated")
        for i in range(300):
            await s.send({"type": "input_audio_buffer.append", "audio": PIECE_20MS})
            if i % 10 == 9:
                await s.send({"type": "input_audio_buffer.clear"})
        for _ in range(30):  # each clear answered (they run on the session's control lane, after the sentinel)
            await s.next_of("input_audio_buffer.cleared")
        await answers_until_sentinel(s, 0)
        await s.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await s.send({"type": "response.create"})
        assert (await s.next_of("response.done"))["response"]["status"] == "completed"
        assert [e for e in s.events if e["type"] == "error" and e["error"]["code"] != "unknown_event"] == []
    assert await metric(url, "limit_append_rate_refusals_total") == 0
    assert await metric(url, "limit_message_rate_refusals_total") == 0


async def test_a_flood_of_tiny_appends_is_bounded_and_counted(start_server: StartServer) -> None:
    limits = Limits(appends_per_second=10, append_burst=40)
    url, _ = await start_server(ToneEngine(seconds_per_char=0.01), limits=limits)
    async with Socket(url) as s:
        await s.next_of("session.created")
        for _ in range(400):  # (not 1,000: a client that lets more than 512 answers pile up is disconnected)
            await s.send(json.dumps({"type": "input_audio_buffer.append", "audio": ONE_SAMPLE}))
        answers = await answers_until_sentinel(s, 0)
        refusals = [e["error"] for e in answers]
        assert {r["code"] for r in refusals} == {"rate_limited"}
        assert all("input_audio_buffer.append" in r["message"] for r in refusals)
        assert len(refusals) >= 200  # 40 in the burst, 10 more for each second the 400 took to arrive
        await s.send({"type": "conversation.item.create", "item": TEXT_ITEM})  # other events: their own budget
        await s.send({"type": "response.create"})
        assert (await s.next_of("response.done"))["response"]["status"] == "completed"
    assert await metric(url, "limit_append_rate_refusals_total") == len(refusals)
    assert await metric(url, "limit_message_rate_refusals_total") == 0


def test_the_gate_tells_appends_from_other_events_before_parsing() -> None:
    gate = MessageGate(Limits(messages_per_second=1e-9, message_burst=1, appends_per_second=1e-9, append_burst=2),
                       ServerMetrics())
    append = json.dumps({"event_id": "e1", "type": "input_audio_buffer.append", "audio": ONE_SAMPLE})
    assert gate.admit(append) is None and gate.admit(append.encode()) is None
    refused = gate.admit(append)
    assert refused is not None and "input_audio_buffer.append" in refused[1]
    assert gate.admit('{"type": "response.cancel"}') is None  # the other bucket is untouched
    refused = gate.admit('{"type": "response.cancel"}')
    assert refused is not None and refused[0] == "rate_limited" and "append" not in refused[1]


def test_append_rate_flag() -> None:
    from omni.app.cli import build_parser
    from omni.app.deploy_args import deploy_settings

    _, limits = deploy_settings(build_parser().parse_args(["serve", "--appends-per-second", "10"]))
    assert limits.appends_per_second == 10 and limits.append_burst == 40
    assert limits.messages_per_second == Limits().messages_per_second  # the events' bucket is apart
