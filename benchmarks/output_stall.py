"""What a stalled server loop does to the assistant's audio at a WebRTC client: a real aiortc client (this process)
talks to `omni serve` (tone engine) running on its own thread and event loop, whose loop is then blocked on purpose.

    python -m benchmarks.output_stall [--stall-ms 1000] [--clock both|new|burst]
    python -m benchmarks.output_stall --sustained 60 --stall-ms 2000 --every-ms 2050   # ICE consent, see below

Timeline: 2 s of silence; a stall while nothing plays; a reply (tone engine) with a stall in the middle of its
speech; then a second reply. The client records each frame's arrival and RTP timestamp; a receiver that plays
every frame it gets, in order, back to back (benchmarks.rtc_client.playout_delays) gives each frame's wait before
it is heard: frames the server sends faster than real time queue there, and so does everything after them.

Printed per clock: the receiver's wait (median) before the first stall and after it, the wait of the second reply's
first audio (how late the user hears it), whether the stalled reply arrived whole (frames vs the engine's
audio_seconds) with contiguous timestamps, the timestamp jump over the silence stall, and the server's counters.
`--clock burst` is the rule before omni/app/frame_clock.py (every late frame sent at once, contiguous timestamps),
kept here for comparison only. Numbers, not assertions: tests/app/test_serve_stall.py asserts on the same run.
`--sustained SECONDS`: the loop stalled --stall-ms every --every-ms for that long instead, an idle client connected;
prints whether the call survived ICE consent freshness (aioice: one check every ~5 s, failing unless answered
within 0.5 s, the connection closed after 6 failures in a row) and the consent expiries at either end.
Run it in a loopback-only network namespace on CI (`unshare -n sh -c 'ip link set lo up; exec "$@"' sh python -m
benchmarks.output_stall`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

import omni.app.rtc_media as rtc_media
from benchmarks.rtc_client import FRAME, RealtimeClient, playout_delays
from benchmarks.soak import ConsentLog, poll_until
from omni.app.background_server import BackgroundServer
from omni.app.frame_clock import FrameClock, Read
from omni.app.realtime_server import ServeOptions
from omni.app.signaling import restrict_ice_hosts
from omni.streaming.engines.tone import ToneEngine

LOUD = 0.02  # RMS of a received frame that carries the reply's tone (0.3 sine: ~0.2)


class BurstClock:
    """The pacing before omni/app/frame_clock.py, for comparison: each frame when its time comes; after a stall every
    frame that fell due goes at once, with contiguous timestamps."""

    def __init__(self, rate: int, frame: int) -> None:
        self.rate, self.frame = rate, frame
        self._start: float | None = None
        self.frames = self.skipped = 0
        self.slipped = 0.0

    async def next_frame(self, read: Read) -> tuple[int, np.ndarray | None]:
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self.frames * self.frame / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self.frames += 1
        return (self.frames - 1) * self.frame, read(self.frame)


@dataclass
class StallReport:
    clock: str
    stall_s: float
    wait_before: float  # median receiver wait of the frames before the first stall (s)
    wait_after_silence_stall: float  # the same, between the silence stall and the first reply
    reply2_first_audio_wait: float  # receiver wait of the second reply's first loud frame
    silence_jump_s: float  # the largest timestamp jump over the silence stall (s; 0.02: none)
    reply1_frames: int  # frames from the stalled reply's first loud frame to its last
    reply1_expected: float  # its audio_seconds (omni.metrics) in frames
    reply1_gaps: int  # timestamp jumps inside the stalled reply (a cut in the speech)
    counters: dict[str, float]

    def lines(self) -> list[str]:
        ms = 1000.0
        return [
            f"clock {self.clock}, stalls of {self.stall_s * ms:.0f} ms:",
            f"  receiver wait before the stalls (median)        {self.wait_before * ms:7.0f} ms",
            f"  after the stall in silence (median)             {self.wait_after_silence_stall * ms:7.0f} ms",
            f"  second reply's first audio, after both stalls   {self.reply2_first_audio_wait * ms:7.0f} ms",
            f"  timestamp jump over the silence stall           {self.silence_jump_s * ms:7.0f} ms",
            f"  stalled reply: {self.reply1_frames} frames for {self.reply1_expected:.0f} of audio, "
            f"{self.reply1_gaps} timestamp gaps inside",
            "  server: " + (", ".join(f"{k} {v:g}" for k, v in sorted(self.counters.items())) or "no counters"),
        ]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def run(stall_s: float = 1.0, clock: str = "new", seconds_per_char: float = 0.03) -> StallReport:
    """One timeline (see the module docstring) against a fresh server; `clock`: "new" or "burst"."""
    restrict_ice_hosts(["127.0.0.1"])
    saved = rtc_media.FrameClock
    rtc_media.FrameClock = BurstClock if clock == "burst" else FrameClock  # type: ignore[misc,assignment]
    bg = BackgroundServer(ToneEngine(seconds_per_char=seconds_per_char), ServeOptions())
    try:
        url = await asyncio.to_thread(bg.start)
        return await _timeline(bg, RealtimeClient(url), stall_s, clock)
    finally:
        rtc_media.FrameClock = saved  # type: ignore[misc]
        await poll_until(lambda: not bg.server.connections, 0.1, 10.0)  # the server's own teardown of the call
        await asyncio.to_thread(bg.stop)


async def _timeline(bg: BackgroundServer, client: RealtimeClient, stall_s: float, clock: str) -> StallReport:
    def stall() -> float:
        bg.loop.call_soon_threadsafe(time.sleep, stall_s)  # a starved loop, without using the CPU
        return time.monotonic()

    async def reply(during: Callable[[], Awaitable[None]] | None = None) -> dict[str, object]:
        n = len(client.events)
        client.send({"type": "response.create"})
        await client.wait_for("output_audio_buffer.started", start=n)
        if during is not None:
            await during()
        await client.wait_for("output_audio_buffer.stopped", start=n, limit=60 + stall_s)
        return await client.wait_for("omni.metrics", start=n)

    marks: dict[str, float] = {}

    async def stall_mid_speech() -> None:
        await asyncio.sleep(0.5)
        stall()

    try:
        await client.connect()
        await client.wait_for("session.created")
        await asyncio.sleep(2.0)
        marks["silence_stall"] = stall()
        await asyncio.sleep(stall_s + 1.5)
        marks["reply1"] = time.monotonic()
        metrics1 = await reply(stall_mid_speech)
        await asyncio.sleep(1.0)
        marks["reply2"] = time.monotonic()
        await reply()
        await asyncio.sleep(0.5)
    finally:
        await client.close()
    counters = {k: v for k, (_, v) in bg.server.metrics.counters.items() if k.startswith("output_")}
    return _report(client, marks, float(metrics1["audio_seconds"]), stall_s, clock, counters)  # type: ignore[arg-type]


def _report(client: RealtimeClient, marks: dict[str, float], audio_seconds: float, stall_s: float, clock: str,
            counters: dict[str, float]) -> StallReport:
    t = np.array([a for a, _ in client.audio])
    rms = np.array([r for _, r in client.audio])
    pts = np.array(client.audio_pts, np.int64)
    wait = np.array(playout_delays(list(t)))
    s0, r1, r2 = marks["silence_stall"], marks["reply1"], marks["reply2"]
    before = (t > s0 - 1.5) & (t < s0)
    after = (t > s0 + stall_s + 0.5) & (t < r1)
    around = np.flatnonzero((t >= s0) & (t < r1))
    jumps = np.diff(pts[around]) if len(around) > 1 else np.array([FRAME])
    loud1 = np.flatnonzero((t >= r1) & (t < r2) & (rms > LOUD))
    talk = pts[loud1[0] : loud1[-1] + 1] if len(loud1) else pts[:0]
    loud2 = np.flatnonzero((t >= r2) & (rms > LOUD))
    return StallReport(
        clock=clock,
        stall_s=stall_s,
        wait_before=_median(list(wait[before])),
        wait_after_silence_stall=_median(list(wait[after])),
        reply2_first_audio_wait=float(wait[loud2[0]]) if len(loud2) else float("nan"),
        silence_jump_s=float(jumps.max()) / 48000,
        reply1_frames=len(talk),
        reply1_expected=audio_seconds * 48000 / FRAME,
        reply1_gaps=int(np.sum(np.diff(talk) != FRAME)),
        counters=counters,
    )


async def sustained(stall_s: float, every_s: float, seconds: float) -> str:
    """ICE consent (RFC 7675) under a loop that stalls over and over: the server's loop blocked `stall_s` every
    `every_s` for `seconds`, an idle aiortc client connected; whether the call survived, and aioice's consent
    expiries (either end: aioice sends a check every ~5 s, each one failing unless answered within 0.5 s, and
    closes after 6 failures in a row)."""
    restrict_ice_hosts(["127.0.0.1"])
    consent = ConsentLog()
    bg = BackgroundServer(ToneEngine(), ServeOptions(idle_timeout=0))
    url = await asyncio.to_thread(bg.start)
    client = RealtimeClient(url)
    end = time.monotonic() + seconds

    def stall() -> None:
        time.sleep(stall_s)
        if time.monotonic() < end:
            bg.loop.call_later(max(0.0, every_s - stall_s), stall)

    try:
        await client.connect()
        await client.wait_for("session.created")
        t0 = time.monotonic()
        bg.loop.call_soon_threadsafe(stall)
        await poll_until(lambda: client.pc.connectionState != "connected", 0.2, seconds + 1)
        state, lasted = client.pc.connectionState, time.monotonic() - t0
        server_side = [c.pc.connectionState for c in bg.server.connections.values()]  # which end gave up
    finally:
        await client.close()
        await poll_until(lambda: not bg.server.connections, 0.1, 10.0)
        await asyncio.to_thread(bg.stop)
    return (f"stalls of {stall_s * 1000:.0f} ms every {every_s * 1000:.0f} ms for {seconds:g} s: the client's peer "
            f"connection {state} after {lasted:.0f} s (the server's: {', '.join(server_side) or 'closed'}), ICE "
            f"consents expired (either end) {consent.expired}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stall-ms", type=float, default=1000.0, help="how long each stall blocks the server's loop")
    ap.add_argument("--clock", choices=("both", "new", "burst"), default="both",
                    help="new: omni/app/frame_clock.py; burst: the rule before it (late frames at once); "
                         "both: one run each")
    ap.add_argument("--sustained", type=float, default=0.0, metavar="SECONDS",
                    help="instead: stall the server's loop --stall-ms every --every-ms for this long with an idle "
                         "client, and print whether the call survives ICE consent")
    ap.add_argument("--every-ms", type=float, default=1100.0, help="with --sustained: one stall this often")
    args = ap.parse_args()
    if args.stall_ms <= 0:
        ap.error("--stall-ms must be > 0")
    if args.sustained > 0:
        if args.every_ms < args.stall_ms:
            ap.error("--every-ms must be at least --stall-ms")
        print(asyncio.run(sustained(args.stall_ms / 1000.0, args.every_ms / 1000.0, args.sustained)))
        return
    for clock in ("new", "burst") if args.clock == "both" else (args.clock,):
        report = asyncio.run(run(args.stall_ms / 1000.0, clock))
        print("\n".join(report.lines()), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
