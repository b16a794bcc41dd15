"""The WebRTC media paths alone, both ways: server's audio track -> Opus -> RTP over loopback -> an aiortc
client, and the client's microphone -> the server's receiver.

    .venv/bin/python -m benchmarks.rtc_output [--bursts 15] [--load-threads 0] [--prefetch 4] [--mic-prefetch 0]

No engine, no signaling server: two `RTCPeerConnection`s in this process, the server side sending the
product's `AssistantAudioTrack` over a stand-in session whose output is a 300 ms tone put in every 0.7 s (at
a random phase of the 20 ms frame clock, as an engine's first chunk lands). Per burst, in ms after the tone was
put: `read` (the track handed its first frame to the encoder), `sent` (its RTP packet left the server), `client`
(the first loud frame came out of the client's receiver). `--load-threads N` runs N threads of pure Python (the
engine's share of the GIL); `--prefetch` sets the *client's* aiortc jitter buffer prefetch (aiortc: 4 frames =
80 ms, a receiver-side delay a browser's NetEq replaces with its own adaptive target). Prints numbers, asserts
nothing.

Uplink: the client's microphone (benchmarks.rtc_client.ScriptedMic) says a 300 ms tone each burst; `mic` is the
time from the tone's first frame handed to the client's encoder to that frame coming out of the server's
receiver, whose jitter buffer is set up as `omni serve` sets it (`hear_at_once`, prefetch `--mic-prefetch`,
default the server's MIC_PREFETCH; 4 is aiortc's default, the server before it held microphone frames back).

With 2 or more load threads the event loop starves (a tone's first read can come 0.7 s late, after the next tone
was put), the bursts overlap and the per-burst pairing no longer holds: read such runs as "the loop starves", not
as per-stage figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import threading
import time
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from benchmarks.rtc_client import ScriptedMic
from omni.app.rtc_media import FRAME_SAMPLES, MIC_PREFETCH, AssistantAudioTrack, hear_at_once
from omni.app.signaling import restrict_ice_hosts

RATE = 48000


class ToneSession:
    """Stands in for `Session.read_output`: a queue of int16 clips, read in frames; times of put and first read."""

    def __init__(self) -> None:
        self.pending: list[np.ndarray] = []
        self.pos = 0
        self.put_at: list[float] = []
        self.read_at: list[float] = []

    def put(self, pcm: np.ndarray) -> None:
        self.pending.append(pcm)
        self.put_at.append(time.monotonic())

    def read_output(self, n: int) -> np.ndarray | None:
        if not self.pending:
            return None
        if self.pos == 0:
            self.read_at.append(time.monotonic())
        clip = self.pending[0]
        out = np.zeros(n, np.int16)
        take = clip[self.pos : self.pos + n]
        out[: len(take)] = take
        self.pos += n
        if self.pos >= len(clip):
            self.pending.pop(0)
            self.pos = 0
        return out


def hog(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(10000):
            x += i * i


def set_client_prefetch(pc: RTCPeerConnection, prefetch: int) -> None:
    from aiortc.jitterbuffer import JitterBuffer

    for t in pc.getTransceivers():
        if t.kind == "audio":
            t.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=prefetch)


async def record(t: Any, arrivals: list[tuple[float, float]]) -> None:
    """(arrival time, RMS) of each frame of track `t` until it ends."""
    while True:
        try:
            frame = await t.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        x = frame.to_ndarray().astype(np.float32) / 32768.0
        arrivals.append((time.monotonic(), float(np.sqrt(np.mean(x * x)))))


def first_after(starts: list[float], times: list[float]) -> list[float]:
    """Per start, ms to the first of `times` at or after it and before the next start."""
    out = []
    for i, p in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else float("inf")
        out += [1000 * (t - p) for t in times if p <= t < nxt][:1]
    return out


async def run(bursts: int, prefetch: int, mic_prefetch: int) -> dict[str, list[float]]:
    session = ToneSession()
    server, client = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    mic = ScriptedMic()
    sent_at: list[float] = []
    arrivals: list[tuple[float, float]] = []
    track = AssistantAudioTrack(session)  # type: ignore[arg-type]
    sender = server.addTrack(track)
    heard: list[tuple[float, float]] = []  # the server's receiver: the microphone's frames
    client.addTrack(mic)
    readers: list[asyncio.Task[None]] = []
    client.on("track", lambda t: readers.append(asyncio.get_running_loop().create_task(record(t, arrivals))))
    server.on("track", lambda t: readers.append(asyncio.get_running_loop().create_task(record(t, heard))))
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    hear_at_once(server, mic_prefetch)
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(server.localDescription)
    set_client_prefetch(client, prefetch)
    transport = sender.transport
    orig = transport._send_rtp
    tone_read = [False]  # the track just read a tone's first frame: the next RTP packet out carries it

    async def send_rtp(data: bytes) -> None:
        if len(data) > 40 and tone_read[0]:
            sent_at.append(time.monotonic())
            tone_read[0] = False
        await orig(data)

    transport._send_rtp = send_rtp  # type: ignore[method-assign]
    orig_recv = track.recv

    async def recv() -> av.AudioFrame:
        n = len(session.read_at)
        f = await orig_recv()
        if len(session.read_at) > n:
            tone_read[0] = True
        return f

    track.recv = recv  # type: ignore[method-assign]
    t = np.arange(int(0.3 * RATE)) / RATE
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    await asyncio.sleep(1.5)
    for _ in range(bursts):
        await asyncio.sleep(0.7 + random.random() * 0.02)
        session.put(tone)
        mic.say(tone)
    await asyncio.sleep(1.0)
    await client.close()
    await server.close()
    spoken = [t - FRAME_SAMPLES / RATE for t, rms in mic.sent if rms > 0.01]  # ScriptedMic notes each frame's end
    mic_starts = [t for i, t in enumerate(spoken) if i == 0 or t - spoken[i - 1] > 0.3]  # 0.4 s between
    return {
        "read": first_after(session.put_at, session.read_at),
        "sent": first_after(session.put_at, sent_at),
        "client": first_after(session.put_at, [a for a, rms in arrivals if rms > 0.01]),
        "mic": first_after(mic_starts, [a for a, rms in heard if rms > 0.01]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=15)
    ap.add_argument("--load-threads", type=int, default=0)
    ap.add_argument("--prefetch", type=int, default=4, help="the client's aiortc jitter buffer prefetch (frames)")
    ap.add_argument("--mic-prefetch", type=int, default=MIC_PREFETCH, help="the server's receiver prefetch (frames)")
    args = ap.parse_args()
    stop = threading.Event()
    threads = [threading.Thread(target=hog, args=(stop,), daemon=True) for _ in range(args.load_threads)]
    for th in threads:
        th.start()
    restrict_ice_hosts(["127.0.0.1"])
    try:
        out = asyncio.run(run(args.bursts, args.prefetch, args.mic_prefetch))
    finally:
        stop.set()
    print(f"load threads {args.load_threads}, client prefetch {args.prefetch}, server mic prefetch {args.mic_prefetch}")
    for k, xs in out.items():
        if xs:
            xs.sort()
            p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
            what = "spoken -> server" if k == "mic" else f"put -> {k}"
            print(f"  {what:16s} n={len(xs):3d} median {statistics.median(xs):6.1f} p95 {p95:6.1f} ms")
    print(f"  loadavg {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
