"""Real browser: Debian's Chromium (headless, fake devices fed by a WAV) talks to `omni serve` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.devices import chromium_args, find_chromium
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium executable (set OMNI_CHROMIUM, or install Debian's chromium package; "
    "scripts/test.sh does that)",
)


async def test_browser_shows_the_reply_and_hears_it(start_server: StartServer, speech_wav_for_browser: Path) -> None:
    from playwright.async_api import Route, async_playwright

    url, server = await start_server(ToneEngine())
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(speech_wav_for_browser)
        )
        try:
            page = await browser.new_page()

            async def only_loopback(route: Route) -> None:  # a second guard: no request leaves 127.0.0.1
                if route.request.url.startswith(url):
                    await route.continue_()
                else:
                    await route.abort()

            await page.route("**/*", only_loopback)
            await page.goto(url + "/")
            await page.click("#connect")
            await page.wait_for_function("window.__omni.state === 'connected'", timeout=30000)
            await page.wait_for_function("window.__omni.assistantText.length > 10", timeout=45000)
            await page.wait_for_function("window.__omni.loudTicks > 5", timeout=30000)
            bubble = await page.text_content(".chat li.assistant")
            state = await page.evaluate("window.__omni")
            await page.click("#hangup")
        finally:
            await browser.close()
    assert bubble is not None and bubble.startswith("Hello, I heard you speak for")
    assert state["maxLevel"] > 0.02 and state["error"] is None
    assert "input_audio_buffer.speech_started" in state["events"] and "response.created" in state["events"]
    print(f"\nbrowser: max RMS {state['maxLevel']:.3f}, metrics {state['metrics']}")
