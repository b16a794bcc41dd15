"""Limits that keep one client from exhausting the server, each with a clear answer and a /metrics counter.

Every default is far above what one person at the demo page does, so a single user never meets them: one
call holds one session, a page reload makes one offer, a browser offer has 2-3 m-lines and at most a dozen
candidates, and the Realtime client sends a few events per second, each well under 10 KB.

Shared by every transport: the WebRTC signaling route and the WebSocket upgrade are admitted by the same
`Server.admit` (sessions, `RateLimiter` per client address, `refusal`), and every inbound data-channel or
WebSocket message passes a `MessageGate` (size and rate), answered with the same `error` events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from omni.streaming.metrics import ServerMetrics

# The data channel message size aiortc advertises (RTCSctpCapabilities.maxMessageSize): 256 KiB.
CHANNEL_MAX_MESSAGE_BYTES = 262144


@dataclass
class Limits:
    max_sessions: int = 16  # calls open at once, connected or not; the 17th gets 503 + Retry-After
    max_pending: int = 8  # of those, calls not yet connected (each holds a peer connection and ICE agent)
    max_body_bytes: int = 256 * 1024  # any request body (an SDP offer is 2-6 KB)
    max_sdp_media: int = 8  # m-lines per offer (the demo page sends 2-3)
    max_candidates: int = 32  # a=candidate lines per offer; each makes the server send STUN checks
    max_message_bytes: int = CHANNEL_MAX_MESSAGE_BYTES  # one inbound (and outbound) data-channel message
    messages_per_second: float = 50.0  # sustained client events per call, bursts of `message_burst`
    message_burst: int = 200  # BURST_SECONDS of the rate (`message_burst_for`)
    # `input_audio_buffer.append` has its own bucket: clients stream an append every 20-100 ms (10-50 a second),
    # which must never trip and never use up the other events' budget, while a flood of tiny appends stays bounded
    appends_per_second: float = 100.0
    append_burst: int = 400
    # One inbound WebSocket message: its audio appends are 6.4 KB per 100 ms, but an input_image data URL of a
    # 1920x1080 PNG screenshot is 2-6 MB, 1.33x that in base64. Up to WS_HARD_FACTOR times this, a bigger
    # message is answered with an error event; beyond, aiohttp closes the socket (1009) rather than buffer it.
    max_ws_message_bytes: int = 8 * 2**20
    max_instructions_chars: int = 8000  # ~2,000 tokens: about 8 s of prefill on the embedded CPU engine
    max_session_minutes: float = 240.0  # then the call is closed with a `session_expired` error; 0: no limit
    connects_per_minute: float = 60.0  # new calls per client address (a reload a second for a minute)
    connect_burst: int = 20
    request_timeout: float = 15.0  # seconds a request may take to arrive (headers and body); half-open: closed
    max_connections_per_address: int = 64  # open HTTP connections from one client address (a browser uses ~6)


BURST_SECONDS = 4.0  # a client may send this many seconds' worth of its event rate at once
WS_HARD_FACTOR = 2  # see Limits.max_ws_message_bytes


def message_burst_for(per_second: float) -> int:
    """The event burst that goes with a sustained rate (200 for the default 50 per second)."""
    return max(1, round(per_second * BURST_SECONDS))


def refusal(status: int, code: str, message: str, retry_after: float | None = None) -> web.Response:
    """An HTTP refusal whose body is a Realtime-style error object, so clients read one shape everywhere."""
    body = {"error": {"type": "invalid_request_error", "code": code, "message": message}}
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def count_refusal(metrics: ServerMetrics, limit: str) -> None:
    metrics.inc(f"limit_{limit}_refusals_total", f"requests or events refused by the {limit} limit")


def check_sdp(sdp: str, limits: Limits) -> str | None:
    """What is over a limit in this offer (None when it is within them)."""
    media = candidates = 0
    for ln in sdp.splitlines():
        if ln.startswith("m="):
            media += 1
        elif ln.startswith("a=candidate:"):
            candidates += 1
    if media > limits.max_sdp_media:
        return f"the offer has {media} media sections (m= lines); at most {limits.max_sdp_media} are accepted"
    if candidates > limits.max_candidates:
        return f"the offer lists {candidates} ICE candidates; at most {limits.max_candidates} are accepted"
    return None


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key (a client address), the least recently used forgotten beyond `max_keys` so a
    spray of source addresses cannot grow it without bound (10,000 buckets are about 2 MB)."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 10000) -> None:
        self.rate, self.burst, self.max_keys = per_minute / 60.0, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> float:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take()


APPEND_TYPE = "input_audio_buffer.append"
SNIFF_CHARS = 256  # where an append's "type" is looked for before parsing (clients put it first or second)


class MessageGate:
    """Inbound message checks for one call, on either transport, before the message is parsed: size
    (`max_bytes`: the data channel's `max_message_bytes` unless given) and rate: audio appends (their type within
    the message's first SNIFF_CHARS characters) take from their own bucket (`appends_per_second`), every other
    message from the events' (`messages_per_second`). A message dressed up as an append only moves to the other
    bucket, so a client gets at most both rates together. `admit` returns an error (code, message) or None."""

    def __init__(self, limits: Limits, metrics: ServerMetrics, max_bytes: int | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.max_bytes = limits.max_message_bytes if max_bytes is None else max_bytes
        self.bucket = TokenBucket(limits.messages_per_second, limits.message_burst)
        self.appends = TokenBucket(limits.appends_per_second, limits.append_burst)

    def admit(self, message: str | bytes) -> tuple[str, str] | None:
        size = len(message) if isinstance(message, bytes) else _utf8_len(message, self.max_bytes)
        if size > self.max_bytes:
            count_refusal(self.metrics, "message_size")
            return "message_too_large", (
                f"event of {size} bytes is larger than the {self.max_bytes}-byte message limit"
            )
        if _is_append(message):
            if self.appends.take() > 0.0:
                count_refusal(self.metrics, "append_rate")
                return "rate_limited", (
                    f"more than {self.limits.appends_per_second:g} {APPEND_TYPE} events per second (bursts of "
                    f"{self.limits.append_burst}); this one was dropped: send audio in bigger pieces"
                )
        elif self.bucket.take() > 0.0:
            count_refusal(self.metrics, "message_rate")
            return "rate_limited", (
                f"more than {self.limits.messages_per_second:g} events per second "
                f"(bursts of {self.limits.message_burst}); this one was dropped"
            )
        return None


def _is_append(message: str | bytes) -> bool:
    if isinstance(message, bytes):
        return f'"{APPEND_TYPE}"'.encode() in message[:SNIFF_CHARS]
    return f'"{APPEND_TYPE}"' in message[:SNIFF_CHARS]


def _utf8_len(text: str, limit: int) -> int:
    """UTF-8 length of `text`, without encoding 16 MB when a quick bound already says it is too big."""
    if len(text) > limit:
        return len(text)  # at least one byte per character
    return len(text.encode("utf-8", "surrogatepass"))


def fit_event(text: str, event: dict[str, Any], limit: int) -> str | None:
    """None when the serialized event `text` fits in `limit` bytes, else why it does not (for an error event)."""
    size = _utf8_len(text, limit)
    if size <= limit:
        return None
    return f"a {event.get('type', 'server')} event of {size} bytes was not sent: over the {limit}-byte message limit"


class RateLimitedLog(logging.Filter):
    """At most `burst` records per logger and message template in `window` seconds, then one line saying how
    many were held back. A flood of 1,100 slow connections once wrote 23,679 log lines in 16 s."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # key -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = 0 if entry is None else int(entry[1]) - self.burst
            self._seen[key] = [now, 1.0]
            self._seen.move_to_end(key)
            while len(self._seen) > 1000:
                self._seen.popitem(last=False)
            if held > 0:
                record.msg = f"{record.msg} [{held} similar lines held back in the last {self.window:g} s]"
            return True
        entry[1] += 1
        return entry[1] <= self.burst


log = logging.getLogger("omni.serve")
REFUSED_LINGER = 1.0  # seconds a refused connection stays open for the client to read its 503


class ConnectionCap:
    """Open HTTP connections per client address, at most `limit`. The request timeout closes a half-open
    connection only after `request_timeout` seconds; meanwhile ~1,100 of them from one client once used up
    every file descriptor (limit 1024) and blocked all new calls. Beyond the cap a connection gets an
    immediate 503 (Retry-After, a Realtime-style error body) and is closed before aiohttp sees it."""

    def __init__(self, limit: int, metrics: ServerMetrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.open: Counter[str] = Counter()

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _CountedProtocol(self, factory())

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.limit:
            count_refusal(self.metrics, "connections_per_address")
            log.warning("refused a connection from %s: %d connections already open", address, self.open[address])
            return False
        self.open[address] += 1
        self._gauge()
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]  # the counter keeps only addresses with open connections
        self._gauge()

    def refusal_bytes(self) -> bytes:
        body = json.dumps({"error": {"type": "invalid_request_error", "code": "too_many_connections", "message":
                                     f"more than {self.limit} open connections from this address"}}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n")
        return head.encode() + body

    def _gauge(self) -> None:
        self.metrics.set_gauge("http_connections_open", "HTTP connections open now", sum(self.open.values()))


class _CountedProtocol(asyncio.Protocol):
    """aiohttp's connection handler, behind the per-address count (everything else is passed through)."""

    def __init__(self, cap: ConnectionCap, inner: asyncio.Protocol) -> None:
        self._cap, self._inner = cap, inner
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if not self._cap.admit(address):
            # answer, half-close, and drop the connection a moment later: closing at once with the client's
            # request unread would reset it (RST) and the client might never see the 503
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self._cap.refusal_bytes())
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._cap.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class CappedTCPSite(web.TCPSite):
    """aiohttp's TCP site with the per-address connection cap in front of its handler."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: ConnectionCap) -> None:
        super().__init__(runner, host, port)
        self.cap = cap

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start without its create_server: ours wraps the handler
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.cap.wrap(server), self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
