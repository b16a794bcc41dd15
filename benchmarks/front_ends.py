"""End of speech -> first audio through each front end, side by side, on one engine (issue 13).

    .venv/bin/python -m benchmarks.front_ends [--engine embedded] [--turns 3] [--only webrtc,ws,browser,gradio,desktop]

One in-process `omni serve` (127.0.0.1 only, silence 500 ms, pause 200 ms) on one engine; the same spoken question
("What is the capital of France?", espeak-ng) goes in through each front end in turn, `--turns` times:

- webrtc: an aiortc client (benchmarks.rtc_client), 20 ms Opus frames in real time;
- ws: the official `openai` SDK over the Realtime WebSocket API (benchmarks.ws_client), 100 ms pieces at 24 kHz;
- browser: Debian's Chromium on the browser demo (`/`), its fake microphone playing the question from a WAV;
- gradio: Chromium on `omni ui`'s Gradio page (the gradio extra), the same WAV;
- desktop: `omni desktop`'s audio path on a private PulseAudio daemon (paplay into the virtual microphone, the
  virtual speaker as output), in-process on the same engine (as `omni desktop` runs by default), half duplex.

Two figures per turn, each measured the same way for every front end:

- mouth -> ear, on the client: from the end of the user's speech at the client's microphone (the last block above
  -40 dBFS before >= 0.4 s of quiet) to the first block of the assistant's audio above -40 dBFS at the client's
  output. Where the client sees it: the page's Web Audio analysers on the microphone stream and on the `<audio>`
  element's stream (polled every 10 ms; after Chromium's jitter buffer), the desktop's PortAudio callbacks (before
  the 100 ms device buffer), the aiortc client's received frames (after aiortc's jitter buffer, which holds 4 frames:
  80 ms) and the WebSocket client's received deltas (before any playout buffer; the simulated clients time a block
  from its first sample).
- server: the server's own `omni.metrics` end_of_speech_to_first_audio_ms (end of speech in the input audio ->
  first audio handed to the transport).

Both include the 500 ms of silence that ends a turn. Numbers, not assertions: on a shared machine they follow the
load (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from benchmarks.devices import chromium_args, find_chromium, pulse_missing, start_pulse, write_y4m
from benchmarks.rtc_client import RealtimeClient
from benchmarks.spoken import read_wav, write_wav
from benchmarks.ws_client import WsRealtimeClient
from omni.app.realtime_server import ServeOptions
from omni.app.serve import make_engine
from omni.app.server_app import build_app
from omni.app.signaling import restrict_ice_hosts
from omni.streaming.vad import TurnConfig

QUESTION = "What is the capital of France?"
LEVEL = 0.01  # -40 dBFS RMS: speech above, silence (and codec noise) below
GAP = 0.4  # seconds of quiet after which the user's speech has ended (the turn ends at 0.5 s)
TURN = TurnConfig(silence_ms=500, pause_ms=200)
Timeline = list[tuple[float, float]]  # (seconds, RMS of a block)


def mouth_to_ear(mic: Timeline, speaker: Timeline, level: float = LEVEL, gap: float = GAP) -> list[float]:
    """For each end of the user's speech in `mic` (a loud block followed by at least `gap` s without one), the
    seconds to the first loud `speaker` block after it, if one comes before the user speaks again."""
    loud = sorted(t for t, r in mic if r > level)
    out = sorted(t for t, r in speaker if r > level)
    ends = [(t, loud[i + 1] if i + 1 < len(loud) else float("inf"))
            for i, t in enumerate(loud) if i + 1 == len(loud) or loud[i + 1] - t > gap]
    found = []
    for end, next_start in ends:
        first = next((t for t in out if t > end), None)
        if first is not None and first < next_start:
            found.append(first - end)
    return found


def rms(pcm: np.ndarray) -> float:
    """RMS of int16 or float samples (full scale 1.0)."""
    x = pcm.astype(np.float32) / (32768.0 if pcm.dtype == np.int16 else 1.0)
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def rms_blocks(pcm: np.ndarray, rate: int, block_s: float = 0.01) -> list[float]:
    """RMS of each `block_s` block of `pcm`."""
    n = max(1, int(rate * block_s))
    return [rms(pcm[i : i + n]) for i in range(0, len(pcm), n)]


class Result:
    def __init__(self, name: str, client: list[float], server: list[float], note: str = "") -> None:
        self.name, self.client, self.server, self.note = name, client, server, note


def _stats(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):6.0f} / {max(xs):6.0f}"


async def run_webrtc(url: str, speech48k: np.ndarray, turns: int) -> Result:
    client = RealtimeClient(url)
    await client.connect()
    server = []
    try:
        for _ in range(turns):
            n = len(client.events)
            client.mic.say(speech48k)
            m = await client.wait_for("omni.metrics", start=n, limit=180)
            await client.wait_for("output_audio_buffer.stopped", start=n, limit=180)
            await asyncio.sleep(1.0)
            server.append(float(m["end_of_speech_to_first_audio_ms"]))
        mic = client.mic.sent
        speaker = list(client.audio)
    finally:
        await client.close()
    return Result("webrtc (aiortc)", [1000 * x for x in mouth_to_ear(mic, speaker)], server)


async def run_ws(url: str, speech48k: np.ndarray, turns: int) -> Result:
    speech = np.concatenate([speech48k[::2], np.zeros(24000, np.int16)])  # 24 kHz (espeak-ng: nothing above 11 kHz)
    client = WsRealtimeClient(url)
    await client.connect()
    server = []
    try:
        for _ in range(turns):
            n = len(client.events)
            await client.append(speech, pace=0.1)
            m = await client.wait_for("omni.metrics", start=n, limit=180)
            await client.wait_for("response.done", start=n, limit=180)
            await asyncio.sleep(1.0)
            server.append(float(m["end_of_speech_to_first_audio_ms"]))
    finally:
        await client.close()
    speaker: Timeline = []
    for t, e in zip(client.arrived, client.events, strict=True):
        if e["type"] == "response.output_audio.delta":
            pcm = np.frombuffer(base64.b64decode(e["delta"]), "<i2")
            speaker += [(t + 0.01 * i, r) for i, r in enumerate(rms_blocks(pcm, 24000))]
    return Result("websocket (openai SDK)", [1000 * x for x in mouth_to_ear(client.sent, speaker)], server)


# Injected before the page's own scripts: the server's omni.metrics as the data channel delivers them, and a
# 10 ms poll of two analysers, the microphone stream (window.omniLocalStream) and the <audio id=remote> stream.
PAGE_METER = """
window.__bench = { server: [], meter: [] };
const __dc = RTCPeerConnection.prototype.createDataChannel;
RTCPeerConnection.prototype.createDataChannel = function (...args) {
  const ch = __dc.apply(this, args);
  ch.addEventListener("message", (e) => {
    try {
      const ev = JSON.parse(e.data);
      if (ev.type === "omni.metrics") window.__bench.server.push(ev.end_of_speech_to_first_audio_ms);
    } catch (err) { /* not ours to judge */ }
  });
  return ch;
};
window.__startMeter = () => {
  const ctx = new AudioContext();
  const buf = new Float32Array(512);
  let mic = null, spk = null;
  const tap = (stream) => {
    const a = ctx.createAnalyser();
    a.fftSize = 512;
    ctx.createMediaStreamSource(stream).connect(a);
    return a;
  };
  const rms = (a) => {
    if (a === null) return 0;
    a.getFloatTimeDomainData(buf);
    let s = 0;
    for (const v of buf) s += v * v;
    return Math.sqrt(s / buf.length);
  };
  setInterval(() => {
    const local = window.omniLocalStream ? window.omniLocalStream() : null;
    if (mic === null && local) mic = tap(local);
    const remote = document.getElementById("remote");
    if (spk === null && remote && remote.srcObject) spk = tap(remote.srcObject);
    window.__bench.meter.push([performance.now() / 1000, rms(mic), rms(spk)]);
  }, 10);
};
"""


async def run_page(name: str, page_url: str, wav: Path, camera: Path, turns: int, ready: str) -> Result:
    from playwright.async_api import Route, async_playwright

    chromium = find_chromium()
    assert chromium is not None
    host = page_url.rsplit(":", 1)[0]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=chromium_args(wav, camera))
        try:
            page = await browser.new_page()

            async def only_loopback(route: Route) -> None:
                await (route.continue_() if route.request.url.startswith(host) else route.abort())

            await page.route("**/*", only_loopback)
            await page.add_init_script(PAGE_METER)
            await page.goto(page_url + "/")
            await page.wait_for_function(ready, timeout=60000)
            await page.evaluate("window.__startMeter()")
            await page.click("#connect")
            await page.wait_for_function("window.__omni.state === 'connected'", timeout=60000)
            await page.wait_for_function(f"window.__bench.server.length >= {turns}", timeout=300000)
            await asyncio.sleep(2.0)  # the last reply's first audio reaches the analyser
            bench = await page.evaluate("window.__bench")
            await page.click("#hangup")
        finally:
            await browser.close()
    meter = bench["meter"]
    client = mouth_to_ear([(t, m) for t, m, _ in meter], [(t, s) for t, _, s in meter])
    return Result(name, [1000 * x for x in client[:turns]], [float(x) for x in bench["server"][:turns]])


async def run_desktop(engine: Any, wav: Path, turns: int, folder: Path) -> Result:
    from omni.app.desktop import Desktop, DesktopOptions, LocalConversation

    why = pulse_missing()
    if why:
        return Result("desktop (PulseAudio)", [], [], f"skipped: {why}")
    pulse = start_pulse(folder)
    mic: Timeline = []
    speaker: Timeline = []
    server: list[float] = []
    done = asyncio.Event()

    class Metered(Desktop):
        def _input_callback(self, q: Any) -> Callable[..., None]:
            inner = super()._input_callback(q)

            def callback(indata: np.ndarray, *rest: Any) -> None:
                mic.append((time.monotonic(), rms(indata[:, 0])))
                inner(indata, *rest)
            return callback

        def _output_callback(self, outdata: np.ndarray, *rest: Any) -> None:
            super()._output_callback(outdata, *rest)
            speaker.append((time.monotonic(), rms(outdata[:, 0])))

    def emit(ev: dict[str, Any]) -> None:
        desktop.on_event(ev)
        if ev["type"] == "omni.metrics":
            server.append(float(ev["end_of_speech_to_first_audio_ms"]))
            if len(server) >= turns:
                done.set()

    desktop = Metered(LocalConversation(engine, emit, TURN), DesktopOptions("pulse", "pulse"))
    try:
        task = asyncio.get_running_loop().create_task(desktop.run())
        await asyncio.wait_for(desktop.started.wait(), 60)
        play = await asyncio.create_subprocess_exec("paplay", "-d", "mic", str(wav), env=pulse.env)
        try:
            await asyncio.wait_for(done.wait(), 120 * turns)
        finally:
            await asyncio.sleep(2.0)
            desktop.stop()
            await task
            if play.returncode is None:
                play.terminate()
            await play.wait()
    finally:
        pulse.stop()
    return Result("desktop (PulseAudio)", [1000 * x for x in mouth_to_ear(mic, speaker)][:turns], server[:turns])


def make_question(folder: Path) -> np.ndarray:
    wav = folder / "q48k.wav"
    subprocess.run([sys.executable, "-m", "benchmarks.spoken", "speak", QUESTION, str(wav), "48000"], check=True)
    return read_wav(wav)[0]


async def main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    engine = make_engine(args.engine, 0.0)
    restrict_ice_hosts(["127.0.0.1"])
    runner = web.AppRunner(build_app(engine, ServeOptions(turn=TURN)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        speech = make_question(folder)
        silence = np.zeros(48000, np.int16)
        # For Chromium (which loops the file) and paplay: 2 s of quiet, the question, 8 s for the reply to play.
        one = [silence, silence, speech, *[silence] * 8]
        looped, desktop_wav = folder / "turn48k.wav", folder / "turns48k.wav"
        write_wav(looped, np.concatenate(one), 48000)
        write_wav(desktop_wav, np.concatenate(one * args.turns), 48000)
        camera = write_y4m(folder / "camera.y4m")
        runs: dict[str, Callable[[], Awaitable[Result]]] = {
            "webrtc": lambda: run_webrtc(url, speech, args.turns),
            "ws": lambda: run_ws(url, speech, args.turns),
            "browser": lambda: run_page("browser demo (Chromium)", url, looped, camera, args.turns,
                                        "document.getElementById('connect') !== null"),
            "gradio": lambda: _gradio(url, looped, camera, args.turns),
            "desktop": lambda: run_desktop(engine, desktop_wav, args.turns, _sub(folder, "pulse")),
        }
        try:
            for name, run in runs.items():
                if name not in only:
                    continue
                if name in ("browser", "gradio") and find_chromium() is None:
                    results.append(Result(name, [], [], "skipped: no chromium executable"))
                    continue
                print(f"... {name}", flush=True)
                results.append(await run())
        finally:
            await runner.cleanup()
    load = os.getloadavg()
    print(f"\nend of speech -> first audio, ms (median / max over {args.turns} turns; engine {args.engine}, silence "
          f"{TURN.silence_ms} ms, pause {TURN.pause_ms} ms; load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'front end':26s} {'mouth -> ear (client)':>22s} {'server omni.metrics':>22s}")
    for r in results:
        print(f"{r.name:26s} {_stats(r.client):>22s} {_stats(r.server):>22s}  {r.note}".rstrip())


async def _gradio(url: str, wav: Path, camera: Path, turns: int) -> Result:
    try:
        from omni.app.gradio_page import UiServer
    except ImportError as e:
        return Result("gradio page (Chromium)", [], [], f"skipped: {e} (the ui extra)")
    ui = UiServer(url)
    page_url = ui.start()
    try:
        return await run_page("gradio page (Chromium)", page_url, wav, camera, turns,
                               "window.__omni && window.__omni.ready === true")
    finally:
        ui.stop()


def _sub(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir(exist_ok=True)
    return path


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="embedded", choices=("embedded", "tiny", "test"))
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--only", default="webrtc,ws,browser,gradio,desktop", help="comma-separated front ends")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
