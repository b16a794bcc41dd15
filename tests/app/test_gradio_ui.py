"""`omni ui` in a real browser: Debian's Chromium (fake microphone from a spoken WAV, fake camera from a .y4m
file) opens the Gradio page, which calls the omni server over WebRTC through the page's own signaling routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gradio", reason="gradio is not installed (the ui extra: pip install -e '.[ui]')")

from app.gradio_page import UiServer
from benchmarks.devices import chromium_args, write_y4m
from benchmarks.spoken import write_wav
from streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_browser import CHROMIUM
from tests.app.test_serve_embedded import engine, france48k, smollm  # noqa: F401 (fixtures)
from tests.streaming.conftest import make_speech_wav

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (scripts/test.sh installs it)")
OpenPage = Callable[..., Awaitable[tuple[Any, list[str], str]]]


@pytest.fixture
async def open_page(start_server: StartServer, tmp_path: Path) -> AsyncIterator[OpenPage]:
    """Start an omni server on `engine` and the Gradio page on it, open the page in Chromium with `wav` as the
    microphone; returns (page, every URL the page requested, the page's URL). Requests elsewhere are aborted."""
    from playwright.async_api import Route, async_playwright

    closers: list[Callable[[], Awaitable[None]]] = []
    camera = write_y4m(tmp_path / "camera.y4m")  # tmp_path is absolute, as Chromium needs

    async def open_(on: Any, wav: Path) -> tuple[Any, list[str], str]:
        server_url, _ = await start_server(on)
        ui = UiServer(server_url)
        url = ui.start()
        closers.append(lambda: _stop(ui))
        p = await async_playwright().start()
        closers.append(p.stop)
        args = chromium_args(wav, camera)
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        closers.append(browser.close)
        page = await browser.new_page()
        requested: list[str] = []

        async def only_the_page(route: Route) -> None:
            requested.append(route.request.url)
            await (route.continue_() if route.request.url.startswith(url + "/") else route.abort())

        await page.route("**/*", only_the_page)
        await page.goto(url + "/")
        # networkidle never comes (gradio keeps a connection open): wait for the client to be loaded.
        await page.wait_for_function("window.__omni && window.__omni.ready === true", timeout=60000)
        return page, requested, url

    yield open_
    for close in reversed(closers):
        await close()


async def _stop(ui: UiServer) -> None:
    ui.stop()


async def test_page_hears_and_barge_in_stops_the_reply(open_page: OpenPage, tmp_path: Path) -> None:
    # Speech, then 2.5 s of silence: Chromium loops the file, so the question comes again while the tone
    # engine's reply (15 words, 0.25 s a word to make: still being made 2.5 s on) plays, and interrupts it.
    wav = make_speech_wav(tmp_path / "hello48k.wav", "Hello there, can you hear me?", 48000, pad=2.5)
    page, requested, url = await open_page(ToneEngine(step_delay=0.25), wav)
    await page.fill("#instructions", "Answer in one short sentence.")
    await page.click("#connect")
    await page.wait_for_function("window.__omni.state === 'connected'", timeout=30000)
    await page.wait_for_function("window.__omni.sessionUpdates >= 1", timeout=30000)  # settings went over
    await page.wait_for_function("window.__omni.loudTicks > 5", timeout=60000)
    await page.wait_for_function("window.__omni.events.includes('output_audio_buffer.cleared')", timeout=60000)
    await page.wait_for_selector("#transcript li.assistant.interrupted", timeout=30000)
    interrupted = await page.text_content("#transcript li.assistant.interrupted")
    # The interrupted reply's audio stops: the assistant's level falls to silence while the user still speaks.
    await page.wait_for_function("document.getElementById('level').value < 0.005", timeout=10000)
    inbound = await page.evaluate("window.omniInboundAudio()")
    user = await page.text_content("#transcript li.user")
    state = await page.evaluate("window.__omni")
    await page.click("#talk")
    muted = await page.evaluate("window.omniLocalStream().getAudioTracks().every((t) => !t.enabled)")
    await page.click("#hangup")
    print(f"\ngradio page: interrupted {interrupted!r}, inbound {inbound}, events {state['events'][:12]}")
    assert state["error"] is None
    assert user and "spoke for" in user
    full = "Hello, I heard you speak for"
    assert interrupted is not None and interrupted.strip() and not interrupted.endswith("answer to you.")
    assert interrupted.startswith(full[: len(interrupted)]) or interrupted.startswith(full)
    assert inbound is not None and inbound["energy"] > 0 and inbound["packets"] > 50
    assert muted, "Mute did not disable the microphone track"
    assert requested and all(u.startswith(url + "/") for u in requested), [u for u in requested if url not in u]


@pytest.mark.slow
async def test_page_answers_a_spoken_question_on_the_embedded_engine(
    open_page: OpenPage, engine: Any, france48k: np.ndarray, tmp_path: Path  # noqa: F811
) -> None:
    # Chromium plays the file from getUserMedia on, and the call connects 0.5-1 s later (more on a loaded
    # machine): 2 s of silence first, so the question is heard whole; 6 s after, so the reply plays before
    # the question loops.
    wav = tmp_path / "france48k.wav"
    silence = np.zeros(48000, np.int16)
    write_wav(wav, np.concatenate([silence, silence, france48k, *[silence] * 6]), 48000)
    page, requested, url = await open_page(engine, wav)
    await page.click("#connect")
    await page.wait_for_function("window.__omni.state === 'connected'", timeout=30000)
    await page.wait_for_function("window.__omni.userText.length > 0", timeout=90000)
    await page.wait_for_function("window.__omni.assistantText.length > 10", timeout=120000)
    await page.wait_for_function("window.__omni.loudTicks > 5", timeout=60000)
    await page.wait_for_function("window.__omni.latencies.length > 0", timeout=60000)
    user = await page.text_content("#transcript li.user")
    reply = await page.text_content("#transcript li.assistant")
    inbound = await page.evaluate("window.omniInboundAudio()")
    state = await page.evaluate("window.__omni")
    await page.click("#hangup")
    print(f"\ngradio page heard {user!r}, replied {reply!r}; inbound {inbound}; metrics {state['metrics']}")
    assert state["error"] is None
    # The page shows what the server recognised and replied. Not asserted: that it is "capital of France" and
    # "Paris". Through Chromium's capture path (the page asks for echo cancellation, noise suppression and
    # gain control) pocketsphinx heard "what is not you the libraries" in one run; Whisper heard "What is the
    # capital and friends?" in 3 of 3 runs (the reply then named Paris anyway), so "france" is not there to
    # assert. The aiortc test in test_serve_embedded.py checks the words on the same engine.
    assert user is not None and user.strip() and user == state["userText"]
    assert reply is not None and len(reply) > 10 and reply == state["assistantText"]
    assert inbound is not None and inbound["energy"] > 0
    assert state["metrics"]["end_of_speech_to_first_audio_ms"] > 0
    assert requested and all(u.startswith(url + "/") for u in requested), [u for u in requested if url not in u]
