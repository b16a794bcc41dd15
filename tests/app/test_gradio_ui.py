"""`omni ui` in a real browser: Debian's Chromium (fake microphone from a spoken WAV, fake camera from a .y4m
file) opens the Gradio page, which calls the omni server over WebRTC through the page's own signaling routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gradio", reason="gradio is not installed (the ui extra: pip install -e '.[ui]')")

from benchmarks.devices import chromium_args, write_y4m
from benchmarks.spoken import write_wav
from omni.app.auth import DEFAULT_USER, AuthConfig
from omni.app.gradio_page import UiServer
from omni.app.realtime_server import Server
from omni.model.pcm import resample
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_browser import CHROMIUM
from tests.app.test_serve_embedded import engine, smollm  # noqa: F401 (fixtures)
from tests.streaming.conftest import make_speech_wav

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (scripts/test.sh installs it)")
OpenPage = Callable[..., Awaitable[tuple[Any, list[str], str]]]


@pytest.fixture
async def open_page(start_server: StartServer, tmp_path: Path) -> AsyncIterator[OpenPage]:
    """Start an omni server on `engine` and the Gradio page on it, open the page in Chromium with `wav` as the
    microphone; returns (page, every URL the page requested, the page's URL). Requests elsewhere are aborted."""
    from playwright.async_api import Route, async_playwright

    closers: list[Callable[[], Awaitable[None]]] = []
    servers: list[Server] = []
    camera = write_y4m(tmp_path / "camera.y4m")  # tmp_path is absolute, as Chromium needs

    async def open_(on: Any, wav: Path, ui_key: str | None = None, key_prompt: str | None = None,
                    **server_options: Any) -> tuple[Any, list[str], str]:
        """`ui_key`: the page's server holds the omni server's key (`omni ui --api-key`); `key_prompt`: what the
        user types when the page asks for one; `server_options`: the omni server's (`auth=...`)."""
        server_url, server = await start_server(on, **server_options)
        servers.append(server)
        ui = UiServer(server_url, api_key=ui_key)
        url = ui.start()
        closers.append(lambda: _stop(ui))
        p = await async_playwright().start()
        closers.append(p.stop)
        args = chromium_args(wav, camera)
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        closers.append(browser.close)
        page = await browser.new_page()
        requested: list[str] = []
        prompts: list[str] = []

        async def answer(dialog: Any) -> None:
            prompts.append(dialog.message)
            await (dialog.accept(key_prompt) if key_prompt is not None else dialog.dismiss())

        page.on("dialog", answer)
        page.prompts = prompts  # (the test reads what the page asked)

        async def only_the_page(route: Route) -> None:
            requested.append(route.request.url)
            await (route.continue_() if route.request.url.startswith(url + "/") else route.abort())

        await page.route("**/*", only_the_page)
        await page.goto(url + "/")
        # networkidle never comes (gradio keeps a connection open): wait for the client to be loaded.
        await page.wait_for_function("window.__omni && window.__omni.ready === true", timeout=60000)
        return page, requested, url

    open_.servers = servers  # type: ignore[attr-defined]  (the omni servers, for tests that look inside)
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


# Asked in the neural voice joe (Piper). Not "What is the capital of France?" in espeak-ng's en-us, as before: Opus
# alone makes Whisper base hear its end as "the capital and friends?" (an Opus round trip through PyAV at 32 kbit/s:
# espeak-ng heard so, joe heard right, and four other questions right in both voices), and through the page
# (Chromium's capture processing, then Opus) even joe's was heard as "the capital of friends?".
QUESTION = "How many days are there in a week?"
QUESTION_WORDS = {"how", "many", "days", "week"}
ANSWER_WORDS = {"7", "seven"}  # SmolLM2-135M, greedy: "A day is 24 hours, so a week has 7 days."


@pytest.fixture(scope="module")
def question48k(engine: Any) -> np.ndarray:  # noqa: F811
    voice = engine.voices.synthesizer("joe")
    pcm = resample(voice.synth_int16(QUESTION).astype(np.float32) / 32768, voice.sample_rate, 48000)
    return np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)


def words_of(text: str) -> set[str]:
    return {w.strip(".,?!;:'\"").lower() for w in text.split()}


@pytest.mark.slow
async def test_page_answers_a_spoken_question_on_the_embedded_engine(
    open_page: OpenPage, engine: Any, question48k: np.ndarray, tmp_path: Path  # noqa: F811
) -> None:
    # Chromium plays the file from getUserMedia on, and the call connects 0.5-1 s later (more on a loaded
    # machine): 2 s of silence first, so the question is heard whole; 6 s after, so the reply plays before
    # the question loops.
    wav = tmp_path / "question48k.wav"
    silence = np.zeros(48000, np.int16)
    write_wav(wav, np.concatenate([silence, silence, question48k, *[silence] * 6]), 48000)
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
    # The transcript shows the recognised question (its key words: what Whisper heard through Chromium's capture
    # processing and Opus) and the reply, as the server sent them.
    assert user is not None and user == state["userText"]
    assert QUESTION_WORDS <= words_of(user), user
    assert reply is not None and len(reply) > 10 and reply == state["assistantText"]
    assert ANSWER_WORDS & words_of(reply), reply
    assert inbound is not None and inbound["energy"] > 0
    assert state["metrics"]["end_of_speech_to_first_audio_ms"] > 0
    assert requested and all(u.startswith(url + "/") for u in requested), [u for u in requested if url not in u]


KEY = "sk-gradio-page-test-key-0123456789"


@pytest.mark.parametrize("key_from", ["omni ui --api-key", "the user, asked by the page"])
async def test_page_on_a_server_with_keys_settings_camera_recalled_and_hang_up(
    open_page: OpenPage, tmp_path: Path, key_from: str
) -> None:
    """Against `omni serve --api-key`: the page calls with the key held by its own server (`omni ui --api-key`),
    or trades the key the user types for a client secret (forwarded `client_secrets`); the voice set in the
    settings reaches the server and its engine, the fake camera's frames reach the engine, a recalled-memory
    event from the server is shown in #recalled, and Hang up ends the server's call (the DELETE with the
    call's secret, forwarded), not just the browser's side."""
    from omni.memory.types import Recall, RecallItem
    from omni.streaming.memory_lane import recalled_items
    from tests.app.test_serve_loopback import wait_until

    wav = tmp_path / "quiet48k.wav"
    write_wav(wav, np.zeros(48000 * 5, np.int16), 48000)  # no turn: nothing here needs a reply
    tone = ToneEngine()
    by_ui = key_from == "omni ui --api-key"
    page, requested, url = await open_page(tone, wav, ui_key=KEY if by_ui else None,
                                           key_prompt=None if by_ui else KEY, auth=AuthConfig(keys={KEY: DEFAULT_USER}))
    server: Server = open_page.servers[-1]  # type: ignore[attr-defined]
    await page.evaluate("""window.__updates = [];
        document.addEventListener('omni:event', (e) => {
          if (e.detail.type === 'session.updated') window.__updates.push(e.detail);
        });""")
    await page.fill("#voice", "ash")
    await page.click("#connect")
    await page.wait_for_function("window.__omni.state === 'connected' || window.__omni.error", timeout=60000)
    assert await page.evaluate("window.__omni.error") is None
    await page.wait_for_function("window.__updates.length >= 1", timeout=30000)
    updated = await page.evaluate("window.__updates[0]")
    await wait_until(lambda: len(server.connections) == 1, 30)
    conn = next(iter(server.connections.values()))
    await wait_until(lambda: sum(s.video_frames for s in tone.sessions) >= 3, 60)  # the engine's rate: 2 a second

    assert conn.session is not None
    item = RecallItem(level="L2", item_id=7, t_start=1.7e9, t_end=1.7e9 + 60, text="Alice likes green tea.",
                      score=0.8712, tokens=6)
    recall = Recall(items=[item], tokens=6, budget_tokens=256, text="", elapsed_ms=1.0)
    conn.send_event(conn.session.events.memory_recalled("resp_test", recalled_items(recall), recall.tokens))
    await page.wait_for_function("document.querySelector('#recalled li:not(.none)') !== null", timeout=30000)
    recalled = await page.text_content("#recalled")

    async with page.expect_response(lambda r: r.request.method == "DELETE", timeout=30000) as hung_up:
        await page.click("#hangup")
    hangup_status = (await hung_up.value).status
    await wait_until(lambda: not server.connections and conn.closed and tone.open_sessions == 0, 30)
    prompts = page.prompts
    print(f"\ngradio page with keys ({key_from}): voice {updated['session']['audio']['output']}, prompts {prompts}, "
          f"engine voices {[s.voice for s in tone.sessions]}, frames {[s.video_frames for s in tone.sessions]}, "
          f"recalled {recalled!r}, hang-up {hangup_status}, closed: {conn.close_reason}")
    assert prompts == ([] if by_ui else ["This server needs an API key:"])
    assert updated["session"]["audio"]["output"]["voice"] == "ash"
    assert tone.sessions[-1].voice == "ash"  # the engine session was reopened with it
    assert recalled is not None and "Alice likes green tea." in recalled and "L2" in recalled and "0.87" in recalled
    assert hangup_status == 204  # the forwarded DELETE with the call's secret (before: 404 or 401)
    assert conn.close_reason == "hung up by the client"  # ended by it, not by noticing the closed channel
    assert requested and all(u.startswith(url + "/") for u in requested), [u for u in requested if url not in u]
