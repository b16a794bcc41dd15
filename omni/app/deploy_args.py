"""`omni serve` flags for running beyond loopback: keys, origins, limits and shutdown (one block of flags).

Kept apart from omni.app.serve so the engine flags and these evolve separately; `deploy_settings` turns them into
the server's `AuthConfig` and `Limits` and refuses an exposed bind without a key.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omni.app.auth import AuthConfig
    from omni.app.limits import Limits

API_KEY_ENV = "OMNI_API_KEY"


def port_number(text: str) -> int:
    """argparse type of a --port: a TCP port, 0 (any free one) to 65535; anything else is a usage error (the
    socket's bind raised an OverflowError traceback, after the engine had loaded)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_access(p)
    _add_limits(p)


def _add_access(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("access", "who may use the server (needed to bind anything but loopback)")
    g.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on the API (/v1/..., /metrics); default: ${API_KEY_ENV}",
    )
    g.add_argument(
        "--keys-file",
        metavar="FILE",
        help='JSON {"<key>": "<user id>"}: several keys, each a user (what memory is scoped by)',
    )
    g.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a web page origin allowed to call the API, e.g. https://app.example.com (repeatable; "
        "default: only pages this server serves)",
    )
    g.add_argument("--public-metrics", action="store_true", help="serve /metrics without a key")
    g.add_argument("--insecure", action="store_true", help="allow binding a non-loopback address without a key")


def _add_limits(p: argparse.ArgumentParser) -> None:
    """The limits' flags; their defaults are `omni.app.limits.Limits`' own (sizes shown in KB)."""
    from omni.app.limits import BURST_SECONDS, Limits  # (aiohttp: imported only when the serve parser is built)

    d = Limits()
    lim = p.add_argument_group(
        "limits", "each refusal is a clear error and counted in /metrics (omni_limit_*_refusals_total)"
    )
    add = lim.add_argument
    add("--max-sessions", type=int, default=d.max_sessions, help="calls open at once (default %(default)s); "
        "beyond: 503 + Retry-After")
    add("--max-pending", type=int, default=d.max_pending, help="calls offered but not yet connected "
        "(default %(default)s)")
    add("--max-session-minutes", type=float, default=d.max_session_minutes,
        help="close a call after this long (default %(default)s; 0: no limit)")
    add("--max-instructions", type=int, default=d.max_instructions_chars, metavar="CHARS",
        help="instructions and typed messages longer than this are refused (default %(default)s)")
    add("--max-body-kb", type=int, default=d.max_body_bytes // 1024, help="request body, SDP included "
        "(default %(default)s)")
    add("--max-candidates", type=int, default=d.max_candidates,
        help=f"ICE candidates per offer (default %(default)s); SDP media sections are capped at {d.max_sdp_media}")
    add("--max-message-kb", type=int, default=d.max_message_bytes // 1024, help="one data-channel event "
        "(default %(default)s)")
    add("--max-ws-message-kb", type=int, default=d.max_ws_message_bytes // 1024, help="one WebSocket event, "
        "images included (default %(default)s); up to twice that an error event, beyond the socket is closed")
    add("--events-per-second", type=float, default=d.messages_per_second,
        help=f"client events per session, on the data channel or the WebSocket, audio appends aside "
        f"(default %(default)s, bursts of {BURST_SECONDS:g} s worth: {d.message_burst})")
    add("--appends-per-second", type=float, default=d.appends_per_second,
        help=f"input_audio_buffer.append events per WebSocket session, a bucket of their own (default "
        f"%(default)s, bursts of {BURST_SECONDS:g} s worth: {d.append_burst}; a client streaming 20 ms pieces "
        "sends 50)")
    add("--connects-per-minute", type=float, default=d.connects_per_minute,
        help=f"new calls per client address (default %(default)s, bursts of {d.connect_burst}); beyond: 429")
    add("--max-connections-per-address", type=int, default=d.max_connections_per_address, metavar="N",
        help="open HTTP connections from one client address (default %(default)s); beyond: an immediate 503, "
        "then closed (slow or half-open clients cannot use up the server's file descriptors)")
    add("--request-timeout", type=float, default=d.request_timeout, metavar="SECONDS",
        help="a request (or an idle HTTP connection) that takes longer is closed (default %(default)s)")
    add("--drain-seconds", type=float, default=10.0, help="on SIGTERM/SIGINT, how long replies in progress get "
        "to finish (default %(default)s); a second signal exits at once")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def deploy_settings(args: argparse.Namespace) -> tuple[AuthConfig, Limits]:
    """The auth and limits settings; ValueError with a message naming the flag for a bad combination."""
    from omni.app.auth import AuthConfig, load_keys_file
    from omni.app.limits import Limits, message_burst_for

    keys = load_keys_file(args.keys_file) if args.keys_file else {}
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if key:
        if len(key) < 16:
            raise ValueError(f"--api-key (or ${API_KEY_ENV}) must be at least 16 characters")
        keys[key] = "default"
    if not keys and not is_loopback(args.host) and not args.insecure:
        raise ValueError(
            f"binding {args.host} would let anyone who can reach it use the server: pass --api-key KEY (or set "
            f"${API_KEY_ENV}, or --keys-file FILE), or --insecure to do it anyway"
        )
    for name in (
        "max_sessions",
        "max_pending",
        "max_instructions",
        "max_body_kb",
        "max_candidates",
        "max_message_kb",
        "max_ws_message_kb",
        "events_per_second",
        "appends_per_second",
        "connects_per_minute",
        "max_connections_per_address",
        "request_timeout",
    ):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    if args.max_session_minutes < 0 or args.drain_seconds < 0:
        raise ValueError("--max-session-minutes and --drain-seconds must be >= 0")
    limits = Limits(
        max_sessions=args.max_sessions,
        max_pending=args.max_pending,
        max_body_bytes=args.max_body_kb * 1024,
        max_candidates=args.max_candidates,
        max_message_bytes=args.max_message_kb * 1024,
        max_ws_message_bytes=args.max_ws_message_kb * 1024,
        messages_per_second=args.events_per_second,
        message_burst=message_burst_for(args.events_per_second),
        appends_per_second=args.appends_per_second,
        append_burst=message_burst_for(args.appends_per_second),
        max_instructions_chars=args.max_instructions,
        max_session_minutes=args.max_session_minutes,
        connects_per_minute=args.connects_per_minute,
        request_timeout=args.request_timeout,
        max_connections_per_address=args.max_connections_per_address,
    )
    auth = AuthConfig(keys=keys, allow_origins=list(args.allow_origin), public_metrics=args.public_metrics)
    return auth, limits
