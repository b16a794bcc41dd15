"""The OpenAI Realtime API over WebSocket: GET /v1/realtime on the `omni serve` app, one `Session` per socket.

The same session and event layer as WebRTC (omni.streaming.session, omni.streaming.events); only the audio differs:
it travels as events, base64 pcm16 mono at 24 kHz both ways (`input_audio_buffer.append` in,
`response.output_audio.delta` out, sent as fast as the engine makes it and the client reads it; the client
plays it and reports what it played with `conversation.item.truncate`). The official SDK connects with
`client.realtime.connect(model=...)`: it sends `?model=...` (ignored: the server runs one engine) and an
`Authorization: Bearer ...` header (checked by omni.app.auth when keys are configured, ignored without); a browser,
which cannot send that header, offers the subprotocols `realtime` and `openai-insecure-api-key.<key>` instead
(omni.app.auth takes the key from there) and gets `realtime` back.

Admission and limits are the WebRTC signaling route's own, not a copy: the auth middleware (omni.app.auth) checks the
key and the page's `Origin` before the upgrade (a cross-site page must not open a session on a local server),
`Server.admit` refuses it while draining, beyond --max-sessions (WebRTC calls and sockets counted together) or
the per-address connect rate, all before `ws.prepare` and so with a plain HTTP refusal; every inbound message
passes a `MessageGate` (size: `Limits.max_ws_message_bytes`; rate: --events-per-second, audio appends
--appends-per-second), answered with the data channel's `error` events, the session going on;
--max-session-minutes ends a socket with the same `session_expired` event; graceful shutdown (omni.app.shutdown)
tells sockets and waits for their replies as it does calls, then closes them with 1001 (going away). Events
already queued when a socket closes get FLUSH_TIMEOUT seconds to leave, so the last `error` reaches the client.

Bounds: server messages wait in an `Outbox` of OUTBOX_MESSAGES, of which speech may fill OUTBOX_AUDIO (then
generation waits, through the session's BLOCK output queue); a client that lets events pile up past the bound
is disconnected, not buffered for. A client that vanishes is noticed by its closed TCP connection or, for a
silent network failure, by unanswered pings (HEARTBEAT_S); then the session is torn down like a WebRTC hang-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from omni.app.auth import REALTIME_SUBPROTOCOL, offered_subprotocols, subprotocol_key
from omni.app.limits import WS_HARD_FACTOR, MessageGate
from omni.app.realtime_server import SERVER_KEY, Server
from omni.app.signaling import OfferError, user_of
from omni.streaming.events import WIRE_RATE, new_id
from omni.streaming.session import Session

log = logging.getLogger("omni.serve.ws")

# Server messages waiting for the client: a reply's text deltas are one per token (~100 for a long reply),
# so 512 is several replies' worth; a client that does not read that many is gone or broken.
OUTBOX_MESSAGES = 512
# Speech messages in the outbox at most: each is one engine chunk (a word to a phrase, 0.2-5 s, <= 320 KB
# base64), so 16 keep the client ahead of playback by seconds and the outbox under ~5 MB.
OUTBOX_AUDIO = 16
HEARTBEAT_S = 20.0  # ping interval; no pong within half of it closes the socket (aiohttp)
FLUSH_TIMEOUT = 0.5  # on close, how long queued events (a final error) get to reach the client


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
        lim = server.options.limits
        self.gate = MessageGate(lim, server.metrics, max_bytes=lim.max_ws_message_bytes)
        self.session: Session | None = None
        self.closing = asyncio.Event()
        self.reason = ""
        self.close_code = WSCloseCode.GOING_AWAY  # unless a reason says otherwise (the handler was cancelled)

    def close_soon(self, reason: str, code: WSCloseCode = WSCloseCode.OK) -> None:
        if not self.closing.is_set():
            self.reason, self.close_code = reason, code
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
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            refused = self.gate.admit(msg.data)  # before parsing, as on the data channel
            if refused is not None:
                self.send_event(session.events.error(*refused))
            elif msg.type == WSMsgType.TEXT:
                session.handle_client_event(msg.data)
            else:
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

    async def flush(self) -> None:
        """Send what is still queued (a final `error`) for up to FLUSH_TIMEOUT s, once the writer has stopped."""
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                while len(self.outbox) and not self.ws.closed:
                    await self.ws.send_str(await self.outbox.get())
        except (TimeoutError, ConnectionError) as e:
            log.info("%s: %d events still queued at close (%s)", self.id, len(self.outbox), type(e).__name__)


async def realtime_socket(request: web.Request) -> web.StreamResponse:
    """GET /v1/realtime: admit (as a WebRTC offer is), upgrade, run one session until either side closes or a
    limit ends it, tear everything down. The key and the page's origin were checked by the auth middleware."""
    server = request.app[SERVER_KEY]
    refused = server.admit(request)  # draining, --max-sessions, connect rate: before any session or upgrade
    if refused is not None:
        return refused
    try:
        user = user_of(request)
    except OfferError as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None
    if subprotocol_key(request) is not None and REALTIME_SUBPROTOCOL not in offered_subprotocols(request):
        # aiohttp would log the offered subprotocols, key and all, when none of them is one it speaks
        raise web.HTTPBadRequest(text=f"offer the subprotocol {REALTIME_SUBPROTOCOL!r} beside the key's "
                                 f"({REALTIME_SUBPROTOCOL}, openai-insecure-api-key.<key>)\n")
    limit = server.options.limits.max_ws_message_bytes
    # aiohttp closes the socket (1009) past its max_msg_size; up to it, the gate answers with an error event
    ws = web.WebSocketResponse(max_msg_size=limit * WS_HARD_FACTOR, heartbeat=HEARTBEAT_S,
                               protocols=(REALTIME_SUBPROTOCOL,))  # echoed when offered (browsers: omni.app.auth)
    call = WsCall(server, ws)
    server.sockets[call.id] = call  # counted from here on: concurrent upgrades cannot all pass the cap
    try:
        await ws.prepare(request)
        await _run(server, call, user)
    finally:
        del server.sockets[call.id]
        _gauge(server)
        current = asyncio.current_task()
        if current is not None:  # the socket's objects form reference cycles, as a WebRTC call's do
            server.release_garbage_after(current)
    return ws


async def _run(server: Server, call: WsCall, user: dict[str, Any]) -> None:
    _gauge(server)
    session = server.make_session(
        call.send_event,
        lambda e: call.close_soon(f"session failed: {e}"),
        audio_over_events=True,
        output_rate=WIRE_RATE,
        **user,  # the bearer key's user (omni.app.auth) when keys are on, else ?user_id= or none
    )
    call.session = session
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = [("read", call.read()), ("write", call.write()),
                                                         ("speak", call.speak())]
    if server.options.limits.max_session_minutes > 0:
        jobs.append(("max-duration", server.session_deadline(call, call.close_soon)))
    tasks: list[asyncio.Task[None]] = []
    try:
        await session.start()
        tasks = [asyncio.create_task(coro, name=f"{call.id}:{name}") for name, coro in jobs]
        jobs = []
        closing = asyncio.create_task(call.closing.wait(), name=f"{call.id}:closing")
        done, _ = await asyncio.wait([*tasks, closing], return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        for t in done:
            if t is not closing and not t.cancelled() and t.exception() is not None:
                call.close_soon(f"{t.get_name()} failed: {type(t.exception()).__name__}: {t.exception()}")
    finally:
        for _, coro in jobs:  # not started (session.start failed)
            coro.close()
        log.info("%s: closing (%s)", call.id, call.reason or "server shutdown")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await call.flush()
        await session.close()
        await call.ws.close(code=call.close_code)


def _gauge(server: Server) -> None:
    server.metrics.set_gauge("ws_connections_active", "WebSocket sessions open now", len(server.sockets))


async def _close_all(app: web.Application) -> None:
    """Server shutdown: end every socket's session (their handlers tear down in `finally`); `omni.app.shutdown.drain`
    has told them and waited for their replies first."""
    for call in tuple(app[SERVER_KEY].sockets.values()):
        assert isinstance(call, WsCall)
        call.close_soon("server shutdown", WSCloseCode.GOING_AWAY)


def add_routes(app: web.Application) -> None:
    app.on_shutdown.append(_close_all)
    app.router.add_get("/v1/realtime", realtime_socket)
