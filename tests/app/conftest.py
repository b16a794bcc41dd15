"""Fixtures for the `omni serve` tests: an in-process server on 127.0.0.1 (ICE host candidates 127.0.0.1 only,
no STUN) and spoken test audio at 48 kHz."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from benchmarks.spoken import read_wav
from omni.app.realtime_server import SERVER_KEY, ServeOptions, Server
from omni.app.server_app import build_app
from omni.app.signaling import restrict_ice_hosts
from omni.streaming.engine import Engine
from omni.streaming.vad import TurnConfig
from tests.streaming.conftest import make_speech_wav

StartServer = Callable[..., Awaitable[tuple[str, Server]]]


@pytest.fixture(scope="session")
def speech48k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A short spoken question, int16 mono at 48 kHz (about 1.7 s)."""
    path = make_speech_wav(tmp_path_factory.mktemp("speech") / "hello48k.wav", "Hello there, can you hear me?", 48000)
    pcm, rate = read_wav(path)
    assert rate == 48000
    return pcm


@pytest.fixture(scope="session")
def speech_wav_for_browser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Speech then 4 s of silence (Chromium loops the file: the reply plays in the silence)."""
    return make_speech_wav(
        tmp_path_factory.mktemp("speech") / "browser48k.wav", "Hello there, can you hear me?", 48000, pad=4.0
    )


@pytest.fixture(scope="session", autouse=True)
def loopback_ice() -> None:
    """Host candidates 127.0.0.1 only, for the whole test process (as `omni serve --ice-host 127.0.0.1`)."""
    restrict_ice_hosts(["127.0.0.1"])


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    runners: list[web.AppRunner] = []

    async def start(engine: Engine, **options: object) -> tuple[str, Server]:
        opts = ServeOptions(**{"turn": TurnConfig(silence_ms=400), **options})  # type: ignore[arg-type]
        app = build_app(engine, opts)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", app[SERVER_KEY]

    yield start
    for r in runners:
        await r.cleanup()
