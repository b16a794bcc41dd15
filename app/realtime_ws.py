"""The OpenAI Realtime API over WebSocket: GET /v1/realtime on the `omni serve` app, one `Session` per socket.

The same session and event layer as WebRTC (streaming.session, streaming.events); only the audio differs:
it travels as events, base64 pcm16 mono at 24 kHz both ways (`input_audio_buffer.append` in,
`response.output_audio.delta` out, sent as fast as the engine makes it and the client reads it; the client
plays it and reports what it played with `conversation.item.truncate`). The official SDK connects with
`client.realtime.connect(model=...)`: it sends `?model=...` (ignored: the server runs one engine) and an
`Authorization: Bearer ...` header (accepted and not checked here).

Bounds: a message is at most MAX_MESSAGE_BYTES (aiohttp closes the socket with 1009 past it); server messages
wait in an `Outbox` of OUTBOX_MESSAGES, of which speech may fill OUTBOX_AUDIO (then generation waits, through
the session's BLOCK output queue); a client that lets events pile up past the bound is disconnected, not
buffered for. A client that vanishes is noticed by its closed TCP connection or, for a silent network
failure, by unanswered pings (HEARTBEAT_S); then the session is torn down like a WebRTC hang-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from app.realtime_server import SERVER_KEY, Server, user_of
from app.signaling import OfferError
from streaming.events import WIRE_RATE, new_id
from streaming.session import Session

log = logging.getLogger("omni.serve.ws")

# A 100 ms append is 6.4 KB of base64; an input_image data URL is the big one: a 1920x1080 PNG screenshot is
# 2-6 MB, 1.33x that in base64. 8 MiB takes those and bounds what one socket can make the server hold.
MAX_MESSAGE_BYTES = 8 * 2**20
# Server messages waiting for the client: a reply's text deltas are one per token (~100 for a long reply),
# so 512 is several replies' worth; a client that does not read that many is gone or broken.
OUTBOX_MESSAGES = 512
# Speech messages in the outbox at most: each is one engine chunk (a word to a phrase, 0.2-5 s, <= 320 KB
# base64), so 16 keep the client ahead of playback by seconds and the outbox under ~5 MB.
OUTBOX_AUDIO = 16
HEARTBEAT_S = 20.0  # ping interval; no pong within half of it closes the socket (aiohttp)
WS_CALLS: web.AppKey[set[WsCall]] = web.AppKey("ws_calls")


class OutboxFull(Exception):
    """The client stopped reading: more than OUTBOX_MESSAGES server messages are waiting."""


class Outbox:
    """Server messages for one socket, in order; events never wait (the session emits them synchronously), speech
    waits for room below `audio_limit` so that events always fit under `limit`."""

    def __init__(self, limit: int = OUTBOX_MESSAGES, audio_limit: int = OUTBOX_AUDIO) -> None:
        self.limit = limit
        self.audio_limit = audio_limit
        self._items: deque[str] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, text: str) -> None:
        if len(self._items) >= self.limit:
            raise OutboxFull(f"{len(self._items)} server messages waiting for the client")
        self._items.append(text)
        self._ready.set()

    async def wait_audio_room(self) -> None:
        while len(self._items) >= self.audio_limit:
            self._room.clear()
            await self._room.wait()

    async def get(self) -> str:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._room.set()
        return self._items.popleft()


class WsCall:
    """One socket: its session, outbox and the tasks that read, write and speak; `closing` ends them."""

    def __init__(self, server: Server, ws: web.WebSocketResponse) -> None:
        self.id = new_id("ws")
        self.server = server
        self.ws = ws
        self.outbox = Outbox()
        self.session: Session | None = None
        self.closing = asyncio.Event()
        self.reason = ""

    def close_soon(self, reason: str) -> None:
        if not self.closing.is_set():
            self.reason = reason
            self.closing.set()

    def send_event(self, event: dict[str, Any]) -> None:
        if self.closing.is_set():
            return
        try:
            self.outbox.put(json.dumps(event))
        except OutboxFull as e:
            self.server.metrics.inc("ws_slow_clients_total", "WebSocket clients disconnected for not reading")
            self.close_soon(f"client not reading: {e}")

    async def read(self) -> None:
        session = self.session
        assert session is not None
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                session.handle_client_event(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.send_event(
                    session.events.error("invalid_event", "binary messages are not events: send JSON text")
                )
        self.close_soon(f"socket closed by the client ({self.ws.close_code})")

    async def write(self) -> None:
        while True:
            await self.ws.send_str(await self.outbox.get())

    async def speak(self) -> None:
        session = self.session
        assert session is not None
        while True:
            await self.outbox.wait_audio_room()
            event = await session.next_audio_event()
            self.outbox.put(json.dumps(event))  # room was awaited above: under audio_limit < limit


async def realtime_socket(request: web.Request) -> web.WebSocketResponse:
    """GET /v1/realtime: upgrade, run one session until either side closes, tear everything down."""
    server = request.app[SERVER_KEY]
    try:
        user = user_of(request)
    except OfferError as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    call = WsCall(server, ws)
    calls = request.app[WS_CALLS]
    calls.add(call)
    server.metrics.set_gauge("ws_connections_active", "WebSocket sessions open now", len(calls))
    session = server.make_session(
        call.send_event,
        lambda e: call.close_soon(f"session failed: {e}"),
        audio_over_events=True,
        output_rate=WIRE_RATE,
        **user,  # the bearer key's user (app.auth) when keys are on, else ?user_id= or none
    )
    call.session = session
    tasks: list[asyncio.Task[None]] = []
    try:
        await session.start()
        tasks = [
            asyncio.create_task(coro, name=f"{call.id}:{name}")
            for name, coro in (("read", call.read()), ("write", call.write()), ("speak", call.speak()))
        ]
        closing = asyncio.create_task(call.closing.wait(), name=f"{call.id}:closing")
        done, _ = await asyncio.wait([*tasks, closing], return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        for t in done:
            if t is not closing and not t.cancelled() and t.exception() is not None:
                call.close_soon(f"{t.get_name()} failed: {type(t.exception()).__name__}: {t.exception()}")
    finally:
        log.info("%s: closing (%s)", call.id, call.reason or "server shutdown")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await ws.close(code=WSCloseCode.GOING_AWAY if not call.reason else WSCloseCode.OK)
        calls.discard(call)
        server.metrics.set_gauge("ws_connections_active", "WebSocket sessions open now", len(calls))
        current = asyncio.current_task()
        if current is not None:  # the socket's objects form reference cycles, as a WebRTC call's do
            server.release_garbage_after(current)
    return ws


async def _close_all(app: web.Application) -> None:
    """Server shutdown: end every socket's session (their handlers tear down in `finally`)."""
    calls = app[WS_CALLS]
    for call in tuple(calls):
        call.close_soon("server shutdown")


def add_routes(app: web.Application) -> None:
    calls: set[WsCall] = set()
    app[WS_CALLS] = calls
    app.on_shutdown.append(_close_all)
    app.router.add_get("/v1/realtime", realtime_socket)
