"""The omni server (omni.app.realtime_server) on a thread with its own event loop, for front ends that run it
in-process next to something else that owns the main thread (`omni ui` runs uvicorn there)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from aiohttp import web

from omni.app.realtime_server import SERVER_KEY, ServeOptions, Server
from omni.app.server_app import build_app
from omni.streaming.engine import Engine


class BackgroundServer:
    """`start()` serves `build_app(engine, options)` on host:port (0: any free port) and returns its URL; `loop` is
    the server's own event loop (benchmarks stall it on purpose: benchmarks/output_stall.py)."""

    def __init__(self, engine: Engine, options: ServeOptions | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._app = build_app(engine, options)
        self._host, self._port = host, port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="omni-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    @property
    def server(self) -> Server:
        return self._app[SERVER_KEY]

    def start(self, timeout: float = 120.0) -> str:
        self._thread.start()
        fut: Future[str] = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.url = fut.result(timeout)  # loading the VAD takes about 1 s; errors (port taken) surface here
        return self.url

    async def _start(self) -> str:
        self._runner = web.AppRunner(self._app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        port = self._runner.addresses[0][1]
        shown = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{shown}:{port}"

    def stop(self, timeout: float = 30.0) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout)
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self.loop.close()
