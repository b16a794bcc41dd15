"""The `omni serve` aiohttp application: the browser demo, WebRTC signaling (omni.app.realtime_server), the Realtime
WebSocket API (omni.app.realtime_ws), client secrets, hang-up and /metrics, behind the auth middleware."""

from __future__ import annotations

from aiohttp import web

from omni.app.auth import auth_middleware
from omni.app.realtime_server import SERVER_KEY, ServeOptions, Server
from omni.app.realtime_ws import add_routes
from omni.streaming.engine import Engine
from omni.ui.pages import WEB_ROOT


def build_app(engine: Engine, options: ServeOptions | None = None) -> web.Application:
    server = Server(engine, options)
    app = web.Application(
        client_max_size=server.options.limits.max_body_bytes, middlewares=[auth_middleware(server.options.auth)]
    )
    app[SERVER_KEY] = server
    app.on_startup.append(server.startup)
    app.on_cleanup.append(server.cleanup)
    app.router.add_get("/", server.index)
    app.router.add_static("/static/", WEB_ROOT)
    app.router.add_post("/v1/realtime/calls", server.offer)
    app.router.add_post("/v1/realtime/client_secrets", server.client_secrets)
    app.router.add_delete("/v1/realtime/calls/{call_id}", server.hangup)
    app.router.add_get("/metrics", server.metrics_page)
    add_routes(app)
    return app
