"""`omni serve` with the embedded default engine, end to end over WebRTC on 127.0.0.1: a spoken question in
(Opus through aiortc, and through Chromium's fake microphone), Whisper's transcript, SmolLM2's reply text and
Piper's speech out; unknown voices refused without harm. These are the slowest tests of the suite (the real
models run)."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from benchmarks.devices import chromium_args
from benchmarks.rtc_client import RealtimeClient
from benchmarks.spoken import spoken_fresh
from benchmarks.ws_client import WsRealtimeClient, invalid_events, response_order_problems
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.streaming.engines.embedded import EmbeddedEngine
from tests.app.conftest import StartServer
from tests.app.test_serve_browser import CHROMIUM
from tests.streaming.test_embedded_engine import FRANCE, FRANCE_VOICE, PROBE_VOICES


@pytest.fixture(scope="module")
def smollm() -> LoadedLM:
    return load_lm()


@pytest.fixture(scope="module")
def engine(smollm: LoadedLM) -> EmbeddedEngine:
    return EmbeddedEngine(lm=smollm, sampling=SamplingConfig(repetition_penalty=1.1, max_new_tokens=40))


@pytest.fixture(scope="module")
def france48k() -> np.ndarray:
    x = spoken_fresh(FRANCE, FRANCE_VOICE, rate=48000)  # the same samples whatever ran before
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


async def test_spoken_question_gets_a_spoken_answer_over_webrtc(
    start_server: StartServer, engine: EmbeddedEngine, france48k: np.ndarray
) -> None:
    url, _ = await start_server(engine)
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        client.mic.say(france48k)
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed", limit=60)
        t_reply = time.monotonic()
        done = await client.wait_for("response.done", limit=120)
        metrics = await client.wait_for("omni.metrics", limit=30)
        deadline = time.monotonic() + 30
        while client.loud_since(t_reply) < 25 and time.monotonic() < deadline:  # noqa: ASYNC110 (> 0.5 s heard)
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    text = "".join(e["delta"] for e in client.events if e["type"] == "response.output_text.delta")
    transcript = "".join(e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta")
    print(f"\nheard {heard['transcript']!r}; replied {text!r}; metrics {metrics}")
    # The question's last words are at the recogniser's margin once Opus has coded them: the same clip was heard
    # as "What is the capital on France?" and as "What is the capital and friends?" in runs minutes apart
    # (correlation with the clip 0.97 both times; Whisper base's word error on espeak-ng voices is issue 15's).
    # The transport is what this test checks: the words before them, and an answer about Paris.
    assert heard["transcript"].lower().startswith("what is the capital"), heard["transcript"]
    assert "paris" in text.lower()
    assert done["response"]["status"] == "completed"
    assert transcript and text.startswith(transcript[: len(transcript) // 2])  # spoken text is the reply's
    assert client.loud_since(t_reply) >= 25, "the assistant's speech did not arrive"
    assert metrics["end_of_speech_to_first_audio_ms"] > 0
    # A client that appends the transcription deltas, as the protocol says, shows a prefix of the final
    # transcript at every point (each partial hypothesis used to be sent whole: "What isWhat is the ...").
    shown = ""
    for e in client.events:
        if e["type"] == "conversation.item.input_audio_transcription.delta" and e["item_id"] == heard["item_id"]:
            shown += e["delta"]
            assert heard["transcript"].startswith(shown), (shown, heard["transcript"])
    assert shown  # (Whisper re-transcribes every second of audio: a ~2 s question has stable words to send)


async def test_unknown_voices_are_refused_and_the_session_keeps_working(
    start_server: StartServer, engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's voice names (issue 16: one aborted the whole server, one hung the device worker, one put a
    file's lines in the log) get an `invalid_value` error naming the field; nothing reaches espeak-ng; the
    same session then takes a known voice and answers a question."""
    from omni.model.embedded import tts

    espeak_voices: list[str] = []
    synth = tts._Library.synth

    def recording_synth(self: tts._Library, text: str, voice: tts.EspeakVoice) -> np.ndarray:
        espeak_voices.append(voice.name)
        return synth(self, text, voice)

    monkeypatch.setattr(tts._Library, "synth", recording_synth)
    url, _ = await start_server(engine)
    client = RealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        for i, name in enumerate(PROBE_VOICES):
            session = {"voice": name} if i % 2 else {"audio": {"output": {"voice": name}}}
            client.send({"type": "session.update", "session": session})
        errors = [await client.wait_for("error", start=0)]
        while len(errors) < len(PROBE_VOICES):
            errors.append(await client.wait_for("error", start=client.events.index(errors[-1]) + 1))
        client.send({"type": "session.update", "session": {"voice": "espeak-british"}})
        updated = await client.wait_for(lambda e: e["type"] == "session.updated")
        client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": FRANCE}]},
            }
        )
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done", limit=120)
    finally:
        await client.close()
    for i, (name, e) in enumerate(zip(PROBE_VOICES, errors, strict=True)):
        field = "session.voice" if i % 2 else "session.audio.output.voice"
        assert e["error"]["code"] == "invalid_value" and e["error"]["param"] == field, e
        assert f"unknown voice {name!r}" in e["error"]["message"] and "joe" in e["error"]["message"]
    assert updated["session"]["audio"]["output"]["voice"] == "espeak-british"
    assert done["response"]["status"] == "completed" and "paris" in str(done).lower()
    assert set(espeak_voices) == {"en-gb-x-rp"}  # only the chosen voice's name ever reached espeak-ng


async def test_spoken_question_gets_a_spoken_answer_over_websocket(
    start_server: StartServer, engine: EmbeddedEngine
) -> None:
    """The official SDK over /v1/realtime: real synthesised speech appended in 100 ms pieces at 24 kHz (real
    time), the recogniser's transcript, SmolLM2's reply spoken by espeak-ng back as output_audio deltas."""
    pcm = spoken_fresh(FRANCE, FRANCE_VOICE, rate=24000)
    speech = np.clip(np.round(np.concatenate([pcm, np.zeros(24000)]) * 32767), -32768, 32767).astype(np.int16)
    url, _ = await start_server(engine)
    client = WsRealtimeClient(url)
    try:
        await client.connect()
        await client.wait_for("session.created")
        await client.append(speech, pace=0.1)
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed", limit=60)
        done = await client.wait_for("response.done", limit=120)
        metrics = await client.wait_for("omni.metrics", limit=30)
    finally:
        await client.close()
    audio = client.audio(done["response"]["id"])
    spoken = done["response"]["output"][0]["content"][0]["transcript"]
    print(f"\nws heard {heard['transcript']!r}; replied {spoken!r}; metrics {metrics}")
    assert "capital" in heard["transcript"].lower() and "france" in heard["transcript"].lower()
    assert "paris" in spoken.lower()
    assert len(audio) > 24000 and np.abs(audio).max() > 3000  # > 1 s of speech at 24 kHz
    assert invalid_events(client.events) == [] and response_order_problems(client.events) == []


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (scripts/test.sh installs Debian's chromium)")
async def test_browser_hears_the_embedded_engine_answer(
    start_server: StartServer, engine: EmbeddedEngine, france48k: np.ndarray, tmp_path: Path
) -> None:
    from playwright.async_api import Route, async_playwright

    wav = tmp_path / "france48k.wav"
    with wave.open(str(wav), "wb") as w:  # Chromium loops the file: 6 s of silence leave room for the reply
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(np.concatenate([france48k, np.zeros(6 * 48000, np.int16)]).astype("<i2").tobytes())
    url, _ = await start_server(engine)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(wav))
        try:
            page = await browser.new_page()

            async def only_loopback(route: Route) -> None:
                await (route.continue_() if route.request.url.startswith(url) else route.abort())

            await page.route("**/*", only_loopback)
            await page.goto(url + "/")
            await page.click("#connect")
            await page.wait_for_function("window.__omni.state === 'connected'", timeout=30000)
            await page.wait_for_function("window.__omni.userText.length > 0", timeout=60000)
            await page.wait_for_function("window.__omni.assistantText.length > 10", timeout=120000)
            await page.wait_for_function("window.__omni.loudTicks > 5", timeout=60000)
            state = await page.evaluate("window.__omni")
            await page.click("#hangup")
        finally:
            await browser.close()
    print(f"\nbrowser heard {state['userText']!r}, replied {state['assistantText']!r}, max RMS {state['maxLevel']:.3f}")
    assert state["error"] is None and state["maxLevel"] > 0.02
    assert "response.output_text.delta" in state["events"]
