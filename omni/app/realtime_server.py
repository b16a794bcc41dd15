"""The `omni serve` server: the browser demo, WebRTC signaling in the OpenAI Realtime style, and /metrics (aiohttp).

Per connection: one `RTCPeerConnection` and one `Session`, owned by a `Connection` and torn down together
on hang-up, disconnect, failure or server shutdown. Signaling: the client POSTs its SDP offer
(Content-Type: application/sdp) to /v1/realtime/calls and gets the SDP answer (201, Location names the call);
events travel as JSON on the client's `oai-events` data channel; microphone and camera arrive as tracks and
the assistant's speech leaves as an audio track of paced 20 ms frames at 48 kHz (omni.app.frame_clock: after a stalled
loop the late silent frames are skipped, not sent at once, so the call does not stay late by the stall). The tracks
and the peer connection's media helpers are in omni.app.rtc_media; reading and checking offers in omni.app.signaling.

ICE: no STUN server unless `--ice-server` is given; `omni.app.signaling.restrict_ice_hosts` (`--ice-host`) restricts
host candidates to the given addresses (aioice otherwise offers every interface address except 127.0.0.1).

Liveness: a client that vanishes without hanging up (tab killed, lid closed, network gone) sends nothing more.
Once a call is connected, a watchdog counts the RTP packets that arrive on its inbound audio (microphone)
tracks, as aiortc's receiver statistics report them (`inbound-rtp` `packetsReceived`: every RTP packet of a
negotiated codec, whatever it carries). Idleness is *no RTP packet at all* for `idle_timeout` seconds: silence
is not idleness, and neither is a muted or disabled browser track, which keeps sending packets (silence frames
at 50 packets/s; with Opus DTX at least one every 400 ms). A client that mutes must do it with
`track.enabled = false`: `replaceTrack(null)` or stopping the track stops RTP and reads as gone. RTCP, STUN
consent checks and data channel messages do not count: a peer that answers ICE but sends no microphone audio
is also idle. An idle call is torn down like a hang-up (an `error` event with code `idle_timeout` first if the
event channel is still open) and counted in `omni_sessions_timed_out_total`; the count is polled every
min(1 s, idle_timeout / 4), so a vanished client is gone within idle_timeout + 1 s. aioice's ICE consent
freshness (about 30 s) stays the backstop.

Memory per call: a closed call (aiortc's peer connection, its DTLS/SRTP/SCTP transports, our Connection and
Session) is one big web of reference cycles, which only a full (generation 2) garbage collection frees. With
the engine's ~200,000 long-lived objects in generation 2, CPython runs that collection rarely: 500
connect/disconnect cycles kept ~100 dead calls (OpenSSL contexts, SRTP sessions included) alive at a time and
RSS rose ~47-61 KB per cycle. So the server freezes what exists at startup (`gc.freeze`: never scanned again)
and runs a full collection after each call's teardown, which then scans only the live calls' objects. A
Realtime WebSocket session (omni.app.realtime_ws) is such a web too (socket, WsCall, Session, engine session) and is
collected the same way once its handler task has ended (`release_garbage_after`).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from omni.app.auth import KEY_KIND, USER_ID, AuthConfig, client_secrets
from omni.app.limits import Limits, MessageGate, RateLimiter, check_sdp, count_refusal, fit_event, refusal
from omni.app.rtc_guard import guard_data_channels
from omni.app.rtc_media import (
    AssistantAudioTrack,
    close_peer,
    count_audio_packets,
    hear_at_once,
    missing_transport,
    pump_track,
)
from omni.app.signaling import BodyTooLarge, OfferError, read_offer, user_of
from omni.streaming.engine import Engine
from omni.streaming.events import new_id
from omni.streaming.frames import SessionUpdate
from omni.streaming.memory_lane import MemoryHub
from omni.streaming.metrics import ServerMetrics
from omni.streaming.session import Session
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker
from omni.ui.pages import demo_page

log = logging.getLogger("omni.serve")
CONNECT_TIMEOUT = 30.0  # a call that never connects is torn down after this
IDLE_TIMEOUT = 10.0  # a connected call whose microphone sends no RTP for this long is torn down
CHANNEL_DRAIN_TIMEOUT = 0.5  # on close, how long queued events get to leave before the peer connection closes


@dataclass
class ServeOptions:
    ice_servers: list[str] = field(default_factory=list)
    turn: TurnConfig = field(default_factory=TurnConfig)
    video_interval: float = 0.5
    idle_timeout: float = IDLE_TIMEOUT  # seconds without inbound audio RTP before a connected call is closed; 0: off
    limits: Limits = field(default_factory=Limits)
    auth: AuthConfig = field(default_factory=AuthConfig)
    memory: MemoryHub | None = None  # None: no memory; flushed and closed at the server's cleanup


class Connection:
    """One call: peer connection, session, the tasks that pump media, and the event channel."""

    def __init__(self, server: Server, pc: RTCPeerConnection, user_id: str | None = None) -> None:
        self.id = new_id("rtc")
        self.secret = secrets.token_urlsafe(24)  # hangs up this call (X-Omni-Call-Secret), whatever the auth
        self.user_id = user_id
        self.gate = MessageGate(server.options.limits, server.metrics)
        self.server = server
        self.pc = pc
        self.session: Session | None = None
        self.out_track: AssistantAudioTrack | None = None
        self.channel: Any = None
        self.pending: deque[str] = deque(maxlen=256)  # events before the data channel opens
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.close_reason: str | None = None  # the first reason teardown was asked for
        self.created = time.monotonic()
        self.audio_packets = 0  # inbound audio RTP packets, as last counted by the idle watchdog

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send_event(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        ch = self.channel
        # aiortc raises ValueError for a message over the peer's SCTP max-message-size, which would end the call
        peer_max = getattr(getattr(ch, "transport", None), "_remote_max_message_size", 0) or 65536
        too_big = fit_event(text, event, min(peer_max, self.server.options.limits.max_message_bytes))
        if too_big is not None:
            count_refusal(self.server.metrics, "outbound_message_size")
            log.warning("%s: %s", self.id, too_big)
            text = json.dumps(self.session.events.error("event_too_large", too_big, kind="server_error")
                              if self.session is not None else {"type": "error", "error": {"message": too_big}})
        if ch is not None and ch.readyState == "open":
            ch.send(text)
        elif not self.closed:
            if len(self.pending) == self.pending.maxlen:
                log.warning("%s: event channel not open, dropping the oldest queued event", self.id)
                self.server.metrics.inc("dropped_pending_events_total",
                                        "server events dropped while a call's data channel was not yet open")
            self.pending.append(text)

    def attach_channel(self, channel: Any) -> None:
        self.channel = channel

        def flush() -> None:
            while self.pending and channel.readyState == "open":
                channel.send(self.pending.popleft())

        channel.on("open", flush)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.server.teardown(self, "event channel closed"))
        if channel.readyState == "open":
            flush()

    def _on_message(self, message: str | bytes) -> None:
        if self.session is None:
            return
        refused = self.gate.admit(message)  # before parsing: 16 MB events were once parsed in full
        if refused is not None:
            self.send_event(self.session.events.error(*refused))
            return
        self.session.handle_client_event(message)

    async def _drain_channel(self) -> None:
        """Give events already sent (a final `error`) a moment to leave before the peer connection closes."""
        ch = self.channel
        if ch is None or ch.readyState != "open" or ch.bufferedAmount <= ch.bufferedAmountLowThreshold:
            return
        drained = asyncio.Event()
        ch.on("bufferedamountlow", drained.set)
        try:
            await asyncio.wait_for(drained.wait(), CHANNEL_DRAIN_TIMEOUT)
        except TimeoutError:
            log.info("%s: %d bytes of events still queued at close", self.id, ch.bufferedAmount)
        finally:
            ch.remove_listener("bufferedamountlow", drained.set)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self.out_track is not None:
            self.out_track.stop()
        await self._drain_channel()
        await close_peer(self.pc)
        self.pending.clear()


SERVER_KEY: web.AppKey[Server] = web.AppKey("server")


class Call(Protocol):
    """A live session on either transport (a WebRTC `Connection`, a WebSocket `omni.app.realtime_ws.WsCall`): what
    the server-wide jobs need of it (admission counts, the duration limit, the shutdown notice and drain)."""

    id: str
    session: Session | None

    def send_event(self, event: dict[str, Any]) -> None: ...


class Server:
    """Process-wide state: the engine, the device worker and the media worker (audio and image work, so that
    barge-in never waits behind a model step), the VAD model, metrics and the live connections."""

    def __init__(self, engine: Engine, options: ServeOptions | None = None) -> None:
        self.engine = engine
        self.options = options or ServeOptions()
        self.worker = DeviceWorker()
        self.media = DeviceWorker("media-worker")
        self.vad: SileroVad | None = None
        self.metrics = ServerMetrics()
        self.metrics.record_graph_captures(getattr(engine, "graph_captures", ()))  # (omni/model/lm/cuda_graph.py)
        self.demo_page = demo_page()  # the browser demo's HTML, put together once
        self.connections: dict[str, Connection] = {}  # WebRTC calls
        self.sockets: dict[str, Call] = {}  # Realtime WebSocket sessions (omni.app.realtime_ws registers them)
        # Offers admitted whose call is not registered yet (their body and SDP are still being read): counted by
        # `admit`, else offers sent all at once would all pass the caps (6 at once once opened 6 with a cap of 2).
        self.admitting: set[object] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False  # shutting down: no new calls (omni.app.shutdown)
        # Run at shutdown after replies drained, before calls close (e.g. flush memory to disk); sync or async.
        self.shutdown_hooks: list[Callable[[], Awaitable[None] | None]] = []
        lim = self.options.limits
        self.connect_rate = RateLimiter(lim.connects_per_minute, lim.connect_burst)

    # ---- life cycle ----

    async def startup(self, app: web.Application) -> None:
        self.worker.start()
        self.media.start()
        if self.options.memory is not None:  # its LM summaries run as low-priority device-worker steps
            self.options.memory.attach(self.worker, asyncio.get_running_loop())
        self.vad = await self.media.run(SileroVad)
        gc.collect()
        gc.freeze()  # the engine, models and imports: long-lived, kept out of every later collection

    async def cleanup(self, app: web.Application) -> None:
        await asyncio.gather(*(c.close() for c in list(self.connections.values())), return_exceptions=True)
        self.connections.clear()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.worker.stop()
        self.media.stop()
        if self.options.memory is not None:  # every session's records are committed before the process ends
            await asyncio.to_thread(self.options.memory.close)
        # startup froze the heap it started with (gc.freeze); frozen objects are never collected, so at exit
        # Triton's nanobind bindings printed ~30 lines of "leaked ..." warnings: free them again
        gc.unfreeze()

    def teardown(self, conn: Connection, reason: str) -> None:
        """Schedule a connection's teardown (safe from any callback; idempotent)."""
        if conn.closed or conn.id not in self.connections:
            return
        log.info("%s: closing (%s)", conn.id, reason)
        conn.close_reason = reason
        del self.connections[conn.id]
        self.metrics.set_gauge("connections_active", "WebRTC calls open now", len(self.connections))
        task = asyncio.get_running_loop().create_task(self._close(conn), name=f"{conn.id}:teardown")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, conn: Connection) -> None:
        await conn.close()
        del conn
        self.release_garbage()

    def release_garbage_after(self, task: asyncio.Task[Any]) -> None:
        """`release_garbage` once `task` (a socket's request handler) has ended and whoever awaited it has run: its
        frames hold the session's objects until then, so a collection from inside it frees nothing."""
        loop = asyncio.get_running_loop()
        task.add_done_callback(lambda _: loop.call_soon(self.release_garbage))

    def release_garbage(self) -> None:
        """Free closed calls now (see the module docstring): one full collection of the unfrozen heap."""
        t0 = time.perf_counter()
        freed = gc.collect()
        self.metrics.inc("gc_runs_total", "full garbage collections after a call closed")
        self.metrics.inc("gc_seconds_total", "time spent in those collections", time.perf_counter() - t0)
        log.debug("garbage collection after a call: %d objects, %.1f ms", freed, (time.perf_counter() - t0) * 1e3)

    # ---- HTTP handlers ----

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.demo_page, content_type="text/html")

    async def metrics_page(self, request: web.Request) -> web.Response:
        self.metrics.set_gauge(
            "device_worker_busy_seconds", "time the device worker spent on jobs", self.worker.busy_seconds
        )
        self.metrics.set_gauge("device_worker_queue", "jobs waiting for the device worker", self.worker.pending())
        self.metrics.set_gauge(
            "media_worker_busy_seconds", "time the media worker spent on audio and image jobs", self.media.busy_seconds
        )
        self.metrics.set_gauge("media_worker_queue", "jobs waiting for the media worker", self.media.pending())
        if self.options.memory is not None:
            stats = self.options.memory.memory.stats
            self.metrics.set_gauge("memory_write_errors", "memory records that could not be persisted (full disk, "
                                   "unwritable store): those sessions kept session-only memory", stats.write_errors)
            self.metrics.set_gauge("memory_open_failures", "sessions that ran without long-term memory: the store "
                                   "could not open them", self.options.memory.open_failures)
        return web.Response(
            text=self.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Prometheus-Format": "0.0.4"},
        )

    async def client_secrets(self, request: web.Request) -> web.Response:
        return await client_secrets(request, self.options.auth)

    async def hangup(self, request: web.Request) -> web.Response:
        """DELETE a call: with its own secret (X-Omni-Call-Secret, given with the answer) or, when keys are
        configured, a key of the user who opened it. A bare call id is not enough."""
        conn = self.connections.get(request.match_info["call_id"])
        given = request.headers.get("X-Omni-Call-Secret", "")
        keyed = self.options.auth.enabled and request.get(KEY_KIND) in ("server", "ephemeral")
        owner = conn is not None and keyed and request.get(USER_ID) == conn.user_id
        if conn is None or not (owner or hmac.compare_digest(given.encode(), conn.secret.encode())):
            return refusal(404, "call_not_found", "no such call (or not yours to hang up)")  # 404: ids stay private
        self.teardown(conn, "hung up by the client")
        return web.Response(status=204)

    def calls(self) -> list[Call]:
        """Every live session, WebRTC calls and WebSocket sessions alike."""
        return [*self.connections.values(), *self.sockets.values()]

    def admit(self, request: web.Request) -> web.Response | None:
        """A refusal when a new session (a WebRTC offer or a WebSocket upgrade) would break a limit, or the server
        is shutting down, else None. WebSocket sessions count towards --max-sessions as calls do; only WebRTC
        calls can be pending (a socket is connected once upgraded)."""
        lim, metrics = self.options.limits, self.metrics
        if self.draining:
            count_refusal(metrics, "draining")
            return refusal(503, "server_shutting_down", "the server is shutting down", retry_after=30)
        open_now = len(self.connections) + len(self.sockets) + len(self.admitting)
        pending = len(self.admitting) + sum(1 for c in self.connections.values() if c.pc.connectionState != "connected")
        if open_now >= lim.max_sessions or pending >= lim.max_pending:
            which = "max_sessions" if open_now >= lim.max_sessions else "max_pending"
            count_refusal(metrics, which)
            return refusal(503, which, f"the server has {open_now} sessions open ({pending} connecting); "
                           f"at most {lim.max_sessions} ({lim.max_pending} connecting) are allowed", retry_after=10)
        wait = self.connect_rate.take(request.remote or "")
        if wait > 0:
            count_refusal(metrics, "connect_rate")
            return refusal(429, "rate_limited", f"more than {lim.connects_per_minute:g} new calls a minute from "
                           "this address", retry_after=wait)
        return None

    async def offer(self, request: web.Request) -> web.Response:
        refused = self.admit(request)
        if refused is not None:
            return refused
        ticket = object()  # counted by `admit` until the call is registered or refused (see `admitting`)
        self.admitting.add(ticket)
        try:
            return await self._offer(request, ticket)
        finally:
            self.admitting.discard(ticket)

    async def _offer(self, request: web.Request, ticket: object) -> web.Response:
        try:
            async with asyncio.timeout(self.options.limits.request_timeout):  # a body trickled in slowly
                sdp, settings = await read_offer(request, self.options.limits.max_body_bytes)
            over = check_sdp(sdp, self.options.limits)
            if over is not None:
                count_refusal(self.metrics, "sdp")
                raise OfferError(over)
        except TimeoutError:
            count_refusal(self.metrics, "request_timeout")
            return refusal(408, "request_timeout", "the offer did not arrive in time")
        except BodyTooLarge as e:
            count_refusal(self.metrics, "body_size")
            return refusal(413, "body_too_large", str(e))
        except OfferError as e:
            self.metrics.inc("offers_rejected_total", "SDP offers answered with 400")
            return refusal(400, "invalid_offer", f"bad offer: {e}")
        try:
            conn, answer = await self._answer(sdp, user_of(request), ticket, settings)
        except OfferError as e:
            self.metrics.inc("offers_rejected_total", "SDP offers answered with 400")
            return refusal(400, "invalid_offer", f"bad offer: {e}")
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{conn.id}", "X-Omni-Call-Secret": conn.secret},
        )

    async def _answer(
        self, sdp: str, user: dict[str, Any], ticket: object, settings: SessionUpdate | None = None
    ) -> tuple[Connection, str]:
        assert self.vad is not None
        ice = [RTCIceServer(urls=u) for u in self.options.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        conn = Connection(self, pc, user.get("user_id"))
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:  # aiortc raises ValueError, OperationError, ... for offers it cannot take
            await close_peer(pc)
            raise OfferError(f"cannot use this SDP offer: {type(e).__name__}: {e}") from None
        if missing_transport(pc):  # aiortc accepted it but could not give every section a transport
            await close_peer(pc)
            raise OfferError("cannot use this SDP offer: a media section has no transport (check BUNDLE and mids)")
        guard_data_channels(pc)  # bytes aiortc's data-channel code does not survive (omni.app.rtc_guard)
        hear_at_once(pc)
        if not any(t.kind == "audio" for t in tracks):
            await close_peer(pc)
            raise OfferError("the offer sends no audio: add a microphone track (m=audio, sendrecv or sendonly)")
        session = self.make_session(
            conn.send_event, lambda e: self.teardown(conn, f"session failed: {e}"), **user
        )
        conn.session = session
        self.connections[conn.id] = conn
        self.admitting.discard(ticket)  # counted as a connection from here on
        self.metrics.set_gauge("connections_active", "WebRTC calls open now", len(self.connections))
        try:
            if settings is not None:  # applied before any audio once the call connects: the control lane goes first
                session.inbox.put_control(settings)
            conn.out_track = AssistantAudioTrack(session, self.metrics)
            pc.addTrack(conn.out_track)
            pc.on("datachannel", lambda ch: conn.attach_channel(ch) if ch.label == "oai-events" else None)
            pc.on("connectionstatechange", lambda: self._on_state(conn))
            for t in tracks:
                conn.spawn(pump_track(session, t), f"in-{t.kind}")
            conn.spawn(self._connect_deadline(conn), "deadline")
            if self.options.limits.max_session_minutes > 0:
                deadline = self.session_deadline(conn, lambda why: self.teardown(conn, why))
                conn.spawn(deadline, "max-duration")
            if self.options.idle_timeout > 0:
                conn.spawn(self._idle_watchdog(conn, self.options.idle_timeout), "idle-watchdog")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # an offer aiortc took but cannot answer: a 400 naming it, never a 500
            self.teardown(conn, "answer failed")
            raise OfferError(f"cannot answer this SDP offer: {type(e).__name__}: {e}") from None
        except BaseException:
            self.teardown(conn, "answer failed")
            raise
        return conn, pc.localDescription.sdp

    def make_session(
        self, emit: Callable[[dict[str, Any]], None], on_failure: Callable[[BaseException], None], **config: Any
    ) -> Session:
        """A session on this server's engine and workers, with the server's turn settings; `config`: other
        SessionConfig fields (the WebSocket transport's audio_over_events, output_rate)."""
        assert self.vad is not None, "the server has not started"
        cfg = SessionConfig(
            turn=TurnConfig(**vars(self.options.turn)),
            video_interval=self.options.video_interval,
            max_instructions_chars=self.options.limits.max_instructions_chars,
            **config,
        )
        return Session(
            self.engine, self.worker, self.vad, emit, cfg, self.metrics, on_failure=on_failure, media=self.media,
            memory=self.options.memory,
        )

    def _on_state(self, conn: Connection) -> None:
        state = conn.pc.connectionState
        log.info("%s: connection %s", conn.id, state)
        if state == "connected" and conn.session is not None and not conn.session.started and not conn.closed:
            conn.spawn(self._start_session(conn), "start")
        if state in ("failed", "closed"):
            self.teardown(conn, f"peer connection {state}")

    async def _start_session(self, conn: Connection) -> None:
        """Open the engine session once the call connects: an offer that never connects costs no engine state
        (20 such offers once took the embedded server from 673 MB to 3.74 GB)."""
        assert conn.session is not None
        try:
            await conn.session.start()
        except Exception as e:  # the engine could not open a session: this call ends, the server goes on
            log.exception("%s: starting the session failed", conn.id)
            error = conn.session.events.error("server_error", f"cannot start the session: {e}", kind="server_error")
            conn.send_event(error)
            self.teardown(conn, "session start failed")

    async def session_deadline(self, call: Call, end: Callable[[str], None]) -> None:
        """--max-session-minutes for one session on either transport: after that long, a `session_expired`
        error event, then `end(reason)` closes it."""
        minutes = self.options.limits.max_session_minutes
        await asyncio.sleep(minutes * 60)
        count_refusal(self.metrics, "session_minutes")
        if call.session is not None:
            why = f"the call reached its {minutes:g}-minute limit"
            call.send_event(call.session.events.error("session_expired", why))
        end(f"session longer than {minutes:g} minutes")

    async def _connect_deadline(self, conn: Connection) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT)
        if conn.pc.connectionState != "connected":
            self.teardown(conn, f"not connected after {CONNECT_TIMEOUT:.0f} s")

    async def _idle_watchdog(self, conn: Connection, limit: float) -> None:
        """Close a connected call whose inbound audio delivers no RTP packet for `limit` seconds (see the
        module docstring for what counts); the clock starts when the call first connects."""
        poll = min(1.0, limit / 4)
        last_change: float | None = None
        while True:
            await asyncio.sleep(poll)
            if last_change is None and conn.pc.connectionState != "connected":
                continue  # not connected yet: the connect deadline covers this
            count = await count_audio_packets(conn.pc)
            now = time.monotonic()
            if last_change is None or count != conn.audio_packets:
                conn.audio_packets, last_change = count, now
                continue
            idle = now - last_change
            if idle >= limit and conn.pc.connectionState == "connected":
                break
        reason = f"no microphone audio (RTP) for {idle:.1f} s, idle timeout {limit:g} s"
        self.metrics.inc("sessions_timed_out_total", "calls closed because the client sent no audio RTP (vanished)")
        if conn.session is not None:
            conn.send_event(conn.session.events.error("idle_timeout", f"closing the call: {reason}"))
        self.teardown(conn, reason)
