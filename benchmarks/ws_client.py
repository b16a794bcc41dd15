"""A Realtime WebSocket client built on the official `openai` SDK (`client.realtime.connect`), for tests and
benchmarks of `omni serve`'s /v1/realtime: it keeps every server event as the server sent it (raw JSON) and
checks each against the SDK's typed server-event union, strictly (the SDK's own `recv` parses leniently).
Events with our `omni.` prefix (documented extensions) are not in that union and are not checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter, ValidationError

from benchmarks.rtc_client import wait_for_event

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
WIRE_RATE = 24000
PIECE = 2400  # 100 ms at 24 kHz: the size of each input_audio_buffer.append


def invalid_events(events: list[dict[str, Any]]) -> list[str]:
    """Each event that does not parse as the SDK's typed server event: its type and the first error."""
    bad = []
    for e in events:
        if str(e.get("type", "")).startswith("omni."):
            continue
        try:
            SERVER_EVENT.validate_python(e)
        except ValidationError as err:
            bad.append(f"{e.get('type')}: {err.errors()[0]['loc']} {err.errors()[0]['msg']}")
    return bad


STREAM_DONE = {  # each delta stream of the reply's part and the event that ends it
    "response.output_text.delta": "response.output_text.done",
    "response.output_audio_transcript.delta": "response.output_audio_transcript.done",
    "response.output_audio.delta": "response.output_audio.done",
}
OPENING = ["response.created", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.content_part.done", "response.output_item.done", "response.done"]


def response_order_problems(events: list[dict[str, Any]]) -> list[str]:
    """Per response: response.created, response.output_item.added, response.content_part.added, the deltas,
    each delta stream's `.done` once and after its last delta (output_text.done always), then
    response.content_part.done, response.output_item.done, response.done, nothing after (WebRTC's
    output_audio_buffer.* follow playback, not generation), whether the response completed, was cancelled or
    failed; and the statuses agree (see `_status_problems`)."""
    seen: dict[str, list[str]] = {}
    for e in events:
        if e["type"].startswith(("output_audio_buffer.", "omni.")):
            continue
        rid = e.get("response_id") or (e.get("response") or {}).get("id")
        if rid:
            seen.setdefault(rid, []).append(e["type"])
    bad = [f"{rid}: {why}" for rid, why in _status_problems(events)]
    for rid, types in seen.items():
        if types[:3] != OPENING or types[-3:] != CLOSING:
            bad.append(f"{rid}: opens or closes out of order: {types}")
            continue
        middle = types[3:-3]
        if middle.count("response.output_text.done") != 1:
            bad.append(f"{rid}: response.output_text.done {middle.count('response.output_text.done')} times")
        for delta, done in STREAM_DONE.items():
            ends = [i for i, t in enumerate(middle) if t == done]
            last_delta = max((i for i, t in enumerate(middle) if t == delta), default=-1)
            if last_delta >= 0 and len(ends) != 1:
                bad.append(f"{rid}: {delta} without exactly one {done}")
            elif ends and ends[0] < last_delta:
                bad.append(f"{rid}: {delta} after {done}")
    return bad


def _status_problems(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The item of `response.output_item.done` is `completed` exactly when its response.done says `completed`
    (`incomplete` when cancelled or failed); a cancelled response says why (`status_details.reason`), a failed
    one carries `status_details.error`."""
    item_status = {e["response_id"]: e["item"].get("status")
                   for e in events if e["type"] == "response.output_item.done"}
    bad = []
    for e in events:
        if e["type"] != "response.done":
            continue
        r = e["response"]
        status, details = r.get("status"), r.get("status_details") or {}
        want = "completed" if status == "completed" else "incomplete"
        if item_status.get(r["id"]) != want:
            bad.append((r["id"], f"response {status} but its item {item_status.get(r['id'])}"))
        if status == "cancelled" and details.get("reason") not in ("turn_detected", "client_cancelled"):
            bad.append((r["id"], f"cancelled without a reason: {details}"))
        if status == "failed" and not (details.get("error") or {}).get("code"):
            bad.append((r["id"], f"failed without an error: {details}"))
    return bad


class WsRealtimeClient:
    def __init__(self, base_url: str, model: str = "omni") -> None:
        """`base_url`: the server's http://host:port; the SDK connects to ws://host:port/v1/realtime?model=..."""
        ws_base = base_url.replace("http://", "ws://", 1) + "/v1"
        self._client = AsyncOpenAI(api_key="unused-by-omni", websocket_base_url=ws_base)
        self._manager: AbstractAsyncContextManager[AsyncRealtimeConnection] | None = None
        self.model = model
        self.conn: AsyncRealtimeConnection | None = None
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # time.monotonic() of each of `events`
        self.sent: list[tuple[float, float]] = []  # (when each appended piece's audio ends, its RMS)
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._manager = self._client.realtime.connect(model=self.model)
        self.conn = await self._manager.__aenter__()
        self._reader = asyncio.create_task(self._read(), name="ws-client-reader")

    async def _read(self) -> None:
        assert self.conn is not None
        while True:
            raw = await self.conn.recv_bytes()
            self.arrived.append(time.monotonic())
            self.events.append(json.loads(raw))
            self._changed.set()

    async def send(self, event: dict[str, Any]) -> None:
        """A client event, serialised by the SDK (its typed params)."""
        assert self.conn is not None
        await self.conn.send(event)  # type: ignore[arg-type]

    async def send_raw(self, text: str) -> None:
        """Anything, unchecked (for bad-input tests)."""
        assert self.conn is not None
        await self.conn.send_raw(text)

    async def append(self, pcm: np.ndarray, pace: float = 0.0) -> None:
        """int16 mono at 24 kHz, as input_audio_buffer.append events of 100 ms; `pace`: seconds between them
        (0.1 is real time)."""
        for i in range(0, len(pcm), PIECE):
            piece = pcm[i : i + PIECE]
            chunk = piece.astype("<i2").tobytes()
            rms = float(np.sqrt(np.mean(np.square(piece / 32768.0)))) if len(piece) else 0.0
            self.sent.append((time.monotonic() + len(piece) / WIRE_RATE, rms))  # paced: the piece is spoken now
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
            if pace:
                await asyncio.sleep(pace)

    async def wait_for(self, pred: Any, limit: float = 30.0, start: int = 0) -> dict[str, Any]:
        return await wait_for_event(self.events, self._changed, pred, limit, start)

    def audio(self, response_id: str) -> np.ndarray:
        """A response's speech as received: int16 at 24 kHz."""
        parts = [
            np.frombuffer(base64.b64decode(e["delta"]), "<i2")
            for e in self.events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._manager is not None:
            await self._manager.__aexit__(None, None, None)
        await self._client.close()
