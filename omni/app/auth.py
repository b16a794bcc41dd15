"""Who may use the API: bearer keys (server keys and short-lived client secrets) and allowed page origins.

Server keys come from `--api-key` / OMNI_API_KEY (user id "default") or a keys file mapping keys to user ids;
the user id is what per-user state (memory) is scoped by, and is put on the request as `request[USER_ID]`.
Browsers should not hold a server key: `POST /v1/realtime/client_secrets` with one returns an ephemeral key
(`ek_...`, OpenAI's shape `{"value", "expires_at", "session"}`) that opens calls for the same user until it
expires. Keys are compared with `hmac.compare_digest` and never logged. A browser cannot set `Authorization` on a
WebSocket: it offers the key (server key or client secret) as the subprotocol `openai-insecure-api-key.<key>` next to
`realtime`, OpenAI's convention, and the server answers with `realtime` (the key is never echoed back).

Origin: a browser page from another site can POST to a server on the user's own machine, and open a WebSocket
to it (no CORS check covers either); a POST, DELETE or WebSocket upgrade whose `Origin` header is neither this
server's own address nor in `--allow-origin` is refused with 403, with or without keys, before its handler runs
(requests without an `Origin` header come from non-browser clients and are not affected; a plain cross-origin
GET cannot read the answer).

`auth_middleware` guards every route under /v1/ (and /metrics unless public), so a WebSocket route added
there is covered without code of its own.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from omni.app.limits import refusal

USER_ID: web.RequestKey[str] = web.RequestKey("omni_user_id")
KEY_KIND: web.RequestKey[str] = web.RequestKey("omni_key_kind")  # "server", "ephemeral" or "none"
DEFAULT_USER = "default"
# A browser's WebSocket offers its key as a subprotocol, next to "realtime" (which the server echoes).
KEY_SUBPROTOCOL = "openai-insecure-api-key."
REALTIME_SUBPROTOCOL = "realtime"
EPHEMERAL_TTL = 600.0  # seconds, as OpenAI's default for client secrets
MAX_EPHEMERAL = 10000  # live client secrets kept at once; the oldest are dropped first
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and what is wrong."""


def load_keys_file(path: str) -> dict[str, str]:
    """A JSON object mapping each key to its user id: `{"sk-...": "alice", "sk-...": "bob"}`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KeysFileError(f"--keys-file {path}: cannot read it as JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise KeysFileError(f'--keys-file {path}: expected a non-empty JSON object {{"<key>": "<user id>"}}')
    for key, user in data.items():
        if not isinstance(user, str) or not user or len(key) < 16:
            raise KeysFileError(f"--keys-file {path}: every key needs >= 16 characters and a non-empty user id")
    return dict(data)


@dataclass
class AuthConfig:
    keys: dict[str, str] = field(default_factory=dict)  # server key -> user id; empty: no authentication
    allow_origins: list[str] = field(default_factory=list)  # e.g. https://app.example.com
    public_metrics: bool = False
    ephemeral: dict[str, tuple[str, float]] = field(default_factory=dict)  # ek_... -> (user id, expires at)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, token: str) -> tuple[str, str] | None:
        """(user id, "server" or "ephemeral") for a valid token; every stored key is compared in constant time."""
        found: tuple[str, str] | None = None
        for key, user in self.keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                found = (user, "server")
        now = time.time()
        for key, (user, expires) in list(self.ephemeral.items()):
            if expires <= now:
                del self.ephemeral[key]
            elif hmac.compare_digest(key.encode(), token.encode()):
                found = found or (user, "ephemeral")
        return found

    def mint(self, user: str, ttl: float) -> tuple[str, float]:
        while len(self.ephemeral) >= MAX_EPHEMERAL:
            del self.ephemeral[next(iter(self.ephemeral))]
        value = "ek_" + secrets.token_urlsafe(24)
        expires = time.time() + ttl
        self.ephemeral[value] = (user, expires)
        return value, expires


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def subprotocol_key(request: web.Request) -> str | None:
    """The key a browser's WebSocket offers as a subprotocol (it cannot send `Authorization`): OpenAI's convention
    `new WebSocket(url, ["realtime", "openai-insecure-api-key." + key])`; a server key or a client secret."""
    return next((p[len(KEY_SUBPROTOCOL):] for p in offered_subprotocols(request) if p.startswith(KEY_SUBPROTOCOL) and
                 len(p) > len(KEY_SUBPROTOCOL)), None)


def offered_subprotocols(request: web.Request) -> list[str]:
    return [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser page (curl, SDKs, our own clients)
    if origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return True
    return urlsplit(origin).netloc == request.host  # the demo page served by this server itself


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def guarded(request: web.Request, config: AuthConfig) -> bool:
    path = request.path
    if path == "/metrics":
        return not config.public_metrics
    return path.startswith("/v1/")


def auth_middleware(config: AuthConfig) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guarded(request, config):
            return await handler(request)
        checked = request.method != "GET" or is_websocket_upgrade(request)
        if checked and not origin_allowed(request, config.allow_origins):
            return refusal(
                403,
                "origin_not_allowed",
                f"requests from {request.headers['Origin']} are not allowed "
                "(the server operator can allow it with --allow-origin)",
            )
        request[USER_ID], request[KEY_KIND] = DEFAULT_USER, "none"
        if not config.enabled:
            return await handler(request)
        token = bearer(request)
        if token is None and is_websocket_upgrade(request):
            token = subprotocol_key(request)
        who = config.identify(token) if token is not None else None
        if who is None:
            if request.method == "DELETE" and request.headers.get("X-Omni-Call-Secret"):
                return await handler(request)  # a call's own secret: the hang-up handler checks it
            return refusal(401, "invalid_api_key", "missing or invalid API key: send Authorization: Bearer <key> "
                           f"(a browser's WebSocket: the subprotocol {KEY_SUBPROTOCOL}<key>)")
        request[USER_ID], request[KEY_KIND] = who
        return await handler(request)

    return middleware


async def client_secrets(request: web.Request, config: AuthConfig) -> web.Response:
    """POST /v1/realtime/client_secrets: an ephemeral key for a browser. Needs a server key (not another
    ephemeral key, which would let a leaked one renew itself). Body (optional): OpenAI's
    `{"expires_after": {"anchor": "created_at", "seconds": 10..7200}}`."""
    if config.enabled and request[KEY_KIND] != "server":
        return refusal(401, "invalid_api_key", "client secrets are issued for a server API key only")
    ttl = EPHEMERAL_TTL
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return refusal(400, "invalid_json", "the body must be JSON (or empty)")
        if body is not None and not isinstance(body, dict):  # was: "str", [1] or 5 minted a secret
            return refusal(400, "invalid_json", f"the body must be a JSON object (or empty), got {type(body).__name__}")
        after = body.get("expires_after") if isinstance(body, dict) else None
        if after is not None:
            seconds = after.get("seconds") if isinstance(after, dict) else None
            if isinstance(seconds, bool) or not isinstance(seconds, int) or not 10 <= seconds <= 7200:
                return refusal(400, "invalid_value", "expires_after.seconds must be an integer in [10, 7200]")
            ttl = float(seconds)
    value, expires = config.mint(request[USER_ID], ttl)
    session = {"type": "realtime", "object": "realtime.session"}
    return web.json_response({"value": value, "expires_at": int(expires), "session": session})
