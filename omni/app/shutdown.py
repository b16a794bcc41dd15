"""Graceful shutdown of `omni serve` on SIGTERM or SIGINT.

First signal: stop accepting calls (503 `server_shutting_down`, WebRTC offers and WebSocket upgrades alike),
tell every live client, on either transport, with an `error` event (code `server_shutting_down`), let replies
in flight finish for up to `drain_seconds`, run the server's shutdown hooks (memory flush), then close every
call (a WebSocket with close code 1001, going away) and exit 0. A second signal exits at once (status 1).
SIGTERM is what systemd, Docker and Kubernetes send; it once killed the server in 0.05 s with no clean-up and
clients learned of it 32 s later, from ICE consent freshness.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time

from aiohttp import web

from omni.app.limits import CappedTCPSite, ConnectionCap
from omni.app.realtime_server import SERVER_KEY, Server

log = logging.getLogger("omni.serve")
POLL = 0.05  # seconds between looks at the replies still in flight


async def drain(server: Server, seconds: float) -> None:
    """Everything before the calls close: refuse new ones, warn live ones, wait for replies, run the hooks."""
    server.draining = True
    for call in server.calls():
        if call.session is not None:
            call.send_event(
                call.session.events.error(
                    "server_shutting_down",
                    f"the server is shutting down; replies in progress get {seconds:g} s to finish",
                    kind="server_error",
                )
            )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # polled: a reply's end has no server-wide event to wait on
        if not any(c.session is not None and c.session.replying for c in server.calls()):
            break
        await asyncio.sleep(POLL)
    for hook in list(server.shutdown_hooks):
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:  # one failing hook must not keep the others (or the exit) from happening
            log.exception("shutdown hook %r failed", hook)


async def serve(app: web.Application, host: str, port: int, drain_seconds: float, request_timeout: float) -> None:
    """Run `app` until SIGTERM or SIGINT, then shut down gracefully (a second signal: exit at once)."""
    # keepalive_timeout also closes a connection that never sends a request (aiohttp starts the timer at
    # connect): ~1,100 half-open connections once used up every file descriptor.
    runner = web.AppRunner(app, keepalive_timeout=request_timeout, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info(
            "%s: shutting down (draining for up to %g s; send it again to exit now)",
            signal.Signals(signum).name,
            drain_seconds,
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        server = app[SERVER_KEY]
        cap = ConnectionCap(server.options.limits.max_connections_per_address, server.metrics)
        site = CappedTCPSite(runner, host, port, cap)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        print(f"omni serve: open http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        await stop.wait()
        await drain(app[SERVER_KEY], drain_seconds)
    finally:
        await runner.cleanup()  # Server.cleanup unfreezes what Server.startup froze
        log.info("shut down")
