"""Latency of `omni serve` over loopback WebRTC: end of speech -> first text / first audio, and barge-in (speech
onset -> server output silent), as the server measures them per turn (omni.metrics).

    .venv/bin/python -m benchmarks.serve_loopback [TURNS] [STEP_DELAY_S] [ENGINE] [PAUSE_MS] [--transport ws]

ENGINE: test (the tone engine, default), tiny (the tiny random-weight decoder LM) or embedded (the default
engine: Whisper, SmolLM2, Piper joe); STEP_DELAY_S slows each engine step (a stand-in for a big model's step
time); PAUSE_MS: the turn detector's pause (default 200; 0: engines prepare nothing before the turn ends).

--transport ws: the same turns through the WebSocket API with the official SDK (benchmarks.ws_client): the
question appended in 100 ms pieces at 24 kHz in real time, then 1 s of silence; no barge-in (over WebSocket
the client plays the audio and would cancel or truncate itself). Both transports report the server's own
figures (omni.metrics: end of speech in the input audio -> first audio handed to the transport).

Prints every turn, the medians and p95, and the load average (on a shared machine the numbers follow the
load). Numbers, not assertions: run it on an idle machine.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from aiohttp import web

from benchmarks.rtc_client import RealtimeClient
from benchmarks.spoken import read_wav
from benchmarks.ws_client import WsRealtimeClient
from omni.app.realtime_server import ServeOptions
from omni.app.serve import make_engine
from omni.app.server_app import build_app
from omni.app.signaling import restrict_ice_hosts
from omni.streaming.vad import TurnConfig


def make_speech() -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "q.wav"
        subprocess.run(
            [sys.executable, "-m", "benchmarks.spoken", "speak", "Hello there, can you hear me?", str(wav), "48000"],
            check=True,
        )
        return read_wav(wav)[0]


async def main(turns: int, step_delay: float, speech: np.ndarray, engine_name: str = "test", pause_ms: int = 200
               ) -> None:
    engine = make_engine(engine_name, step_delay)
    restrict_ice_hosts(["127.0.0.1"])
    app = build_app(engine, ServeOptions(turn=TurnConfig(silence_ms=500, pause_ms=pause_ms)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = RealtimeClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
    await client.connect()
    first_text, first_audio, barge = [], [], []
    try:
        for _ in range(turns):
            n = len(client.events)
            client.mic.say(speech)
            await client.wait_for("output_audio_buffer.started", start=n)
            await asyncio.sleep(0.6)
            client.mic.say(speech)  # barge in
            m = await client.wait_for("omni.metrics", start=n)
            await client.wait_for("input_audio_buffer.speech_stopped", start=len(client.events) - 1)
            m2 = await client.wait_for("omni.metrics", start=len(client.events) - 1)  # the reply to the barge-in
            for x in (m, m2):
                print(
                    f"turn {x['turn']}: first text {x['end_of_speech_to_first_text_ms']} ms, first audio "
                    f"{x['end_of_speech_to_first_audio_ms']} ms, barge-in {x['barge_in_ms']} ms, "
                    f"rtf {x['real_time_factor']}"
                )
                first_text.append(x["end_of_speech_to_first_text_ms"])
                first_audio.append(x["end_of_speech_to_first_audio_ms"])
                if x["barge_in_ms"] is not None:
                    barge.append(x["barge_in_ms"])
            await asyncio.sleep(0.5)
    finally:
        await client.close()
        await runner.cleanup()
    print(
        f"median over {len(first_text)} replies (silence_ms 500 included): end of speech -> first text "
        f"{statistics.median(first_text):.0f} ms, -> first audio {statistics.median(first_audio):.0f} ms; "
        f"barge-in median {statistics.median(barge):.0f} ms over {len(barge)} (min {min(barge):.0f}, "
        f"max {max(barge):.0f}); step delay {step_delay * 1000:.0f} ms, engine {engine_name}, pause {pause_ms} ms"
    )
    p95 = float(np.percentile(np.array(first_audio), 95))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # server and client: one process
    load = os.getloadavg()[0]
    print(f"end of speech -> first audio p95 {p95:.0f} ms; peak RSS {peak_mb:.0f} MB; load average {load:.2f}")


async def main_ws(turns: int, step_delay: float, speech48k: np.ndarray, engine_name: str, pause_ms: int) -> None:
    engine = make_engine(engine_name, step_delay)
    app = build_app(engine, ServeOptions(turn=TurnConfig(silence_ms=500, pause_ms=pause_ms)))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    # to 24 kHz by dropping every other sample: espeak-ng (22,050 Hz) has nothing above 11 kHz to alias
    speech = np.concatenate([speech48k[::2], np.zeros(24000, np.int16)])
    client = WsRealtimeClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
    await client.connect()
    first_text, first_audio = [], []
    try:
        for _ in range(turns):
            n = len(client.events)
            await client.append(speech, pace=0.1)
            x = await client.wait_for("omni.metrics", start=n, limit=120)
            print(
                f"turn {x['turn']}: first text {x['end_of_speech_to_first_text_ms']} ms, first audio "
                f"{x['end_of_speech_to_first_audio_ms']} ms, rtf {x['real_time_factor']}"
            )
            first_text.append(x["end_of_speech_to_first_text_ms"])
            first_audio.append(x["end_of_speech_to_first_audio_ms"])
    finally:
        await client.close()
        await runner.cleanup()
    print(
        f"websocket: median over {len(first_text)} replies (silence_ms 500 included): end of speech -> first text "
        f"{statistics.median(first_text):.0f} ms, -> first audio {statistics.median(first_audio):.0f} ms; "
        f"engine {engine_name}, pause {pause_ms} ms"
    )


if __name__ == "__main__":
    ws = "--transport" in sys.argv and sys.argv[sys.argv.index("--transport") + 1] == "ws"
    if "--transport" in sys.argv:
        i = sys.argv.index("--transport")
        del sys.argv[i : i + 2]
    turns = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    engine_name = sys.argv[3] if len(sys.argv) > 3 else "test"
    pause_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    asyncio.run((main_ws if ws else main)(turns, delay, make_speech(), engine_name, pause_ms))
