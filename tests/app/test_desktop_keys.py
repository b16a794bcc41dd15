"""`omni desktop --server ws://... --api-key KEY` against a real server that has keys (`omni serve --api-key`):
the right key holds a spoken conversation, a wrong or missing one is a one-line error, not a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from omni.app.auth import DEFAULT_USER, AuthConfig
from omni.app.cli import main
from omni.app.deploy_args import API_KEY_ENV
from omni.app.desktop_remote import RemoteConversation
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer

KEY = "sk-desktop-test-key-0123456789"


async def keyed_server(start_server: StartServer) -> str:
    url, _ = await start_server(ToneEngine(), auth=AuthConfig(keys={KEY: DEFAULT_USER}))
    return url.replace("http://", "ws://")


async def test_the_right_key_holds_a_spoken_conversation(start_server: StartServer, speech48k: np.ndarray) -> None:
    url = await keyed_server(start_server)
    events: list[dict[str, Any]] = []
    done = asyncio.Event()

    def emit(ev: dict[str, Any]) -> None:
        events.append(ev)
        if ev["type"] == "response.done":
            done.set()

    conv = RemoteConversation(url, emit, api_key=KEY)
    await conv.start()
    try:
        # The microphone's 10 ms blocks at 48 kHz (as omni.app.desktop hands them over), then 1 s of silence.
        pcm = np.concatenate([speech48k, np.zeros(48000, np.int16)])
        for i in range(0, len(pcm), 480):
            conv.push_audio(pcm[i : i + 480])
            if i % 4800 == 0:
                await asyncio.sleep(0.05)  # about twice real time: the writer task sends as it goes
        await asyncio.wait_for(done.wait(), 120)
    finally:
        await conv.close()
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    words = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert words.startswith("Hello, I heard you speak for"), words


@pytest.mark.parametrize("key", ["sk-not-the-right-key-0000", None])
async def test_a_wrong_or_missing_key_is_a_clear_error(
    start_server: StartServer, key: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sounddevice", exc_type=OSError)
    url = await keyed_server(start_server)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    argv = ["desktop", "--server", url, *(["--api-key", key] if key else [])]
    assert await asyncio.to_thread(main, argv) == 1  # main runs its own event loop: off this one
    err = capsys.readouterr().err
    print(f"\n{err}")
    assert "omni desktop: error:" in err and "401" in err and "--api-key KEY" in err, err
    assert "Traceback" not in err


async def test_the_key_can_come_from_the_environment(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OMNI_API_KEY (as `omni serve` reads it): the server takes the connection; what follows is the sound
    devices (none here: a PortAudio error, or a short run where a sound server is running)."""
    pytest.importorskip("sounddevice", exc_type=OSError)
    url = await keyed_server(start_server)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    rc = await asyncio.to_thread(main, ["desktop", "--server", url, "--seconds", "0.5"])
    err = capsys.readouterr().err
    assert "401" not in err and "Traceback" not in err, err
    assert rc == 0 or "sound device" in err, err
