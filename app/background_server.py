"""The omni server (app.realtime_server) on a thread with its own event loop, for front ends that run it
in-process next to something else that owns the main thread (`omni ui` runs uvicorn there)."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import Future

from aiohttp import web

from app.realtime_server import ServeOptions
from app.server_app import build_app
from streaming.engine import Engine


class BackgroundServer:
    """`start()` serves `build_app(engine, options)` on host:port (0: any free port) and returns its URL."""

    def __init__(self, engine: Engine, options: ServeOptions | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._app = build_app(engine, options)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="omni-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def start(self, timeout: float = 120.0) -> str:
        self._thread.start()
        fut: Future[str] = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
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
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
            self._runner = None
            gc.unfreeze()  # what Server.startup froze can be freed again (else Triton's bindings report leaks at exit)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()
