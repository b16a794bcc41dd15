"""Soaks that print numbers (no pass/fail): a long session, connect/disconnect churn, concurrent sessions.

  python -m benchmarks.soak hour --engine test --minutes 60   # one session, a turn every 20 s of audio
  python -m benchmarks.soak hour --engine embedded --minutes 60 --speech --memory   # the packaged default
  python -m benchmarks.soak churn --cycles 500                 # real WebRTC calls over loopback, some vanish
  python -m benchmarks.soak concurrent --sessions 12 --seconds 120

`hour` runs faster than real time: the session is fed 20 s of microphone audio as fast as it takes it (silence,
or with `--speech` a spoken question, espeak-ng, at its start), then a typed turn (without `--speech`) and
`response.create`; it prints, per 10 simulated minutes, RSS growth, the engine session's KV cache (tokens
written, tokens held, bytes), the memory store (with `--memory`: events, notes, RAM index, bytes on disk),
reply latency (to the first text delta and to `response.done`), the process's CPU seconds per turn and the
load average (on a shared machine wall-clock latency follows the load; CPU per turn shows a drift of our own).
`--minutes` bounds the simulated time and `--wall-minutes` the real time (an engine slower than real time on a
busy machine stops early, saying so). `--trace FRAMES` attributes growth after warm-up (`--trace-after`, simulated
minutes): at each report the largest growth in Python allocations by call site (tracemalloc), in live objects by
type and in glibc's heap (in use vs. free but kept), since the trace began. `concurrent` prints replies, output
frames received, dropped output frames (jumps in the received RTP timestamps, less the silent frames the server's
FrameClock skipped on purpose after a late wake-up, which are counted apart), the real-time pace (frames the calls
produced and received vs 50 per second each: a loop that cannot keep up sends speech late and skips silence),
inter-frame arrival gaps, dropped input frames, UDP datagrams the kernel dropped, the event loop's lag, ICE consent
expiries, the server's counters, and each lost call with the reason the server closed it; `--stall-ms` blocks the
loop on purpose to show what a starved loop does (see README: Soaks).
`churn` and `concurrent` start the server in this process on 127.0.0.1 (run them inside a loopback-only
network namespace on CI: `unshare -n sh -c 'ip link set lo up; exec "$@"' sh python -m benchmarks.soak ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import time
from asyncio import InvalidStateError
from typing import Any

import numpy as np

from benchmarks.rtc_client import WAIT, RealtimeClient, wait_for_event


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def poll_until(pred: Any, step: float = 0.002, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(step)


def make_engine(name: str) -> Any:
    if name == "embedded":  # the packaged default: Whisper base, SmolLM2-135M-Instruct, Piper
        import torch

        from omni.streaming.engines.embedded import EmbeddedEngine

        torch.set_num_threads(1)  # as omni serve runs it
        return EmbeddedEngine()
    if name == "tiny":
        import torch

        from omni.streaming.engines.tiny import TinyLMEngine

        torch.set_num_threads(1)
        return TinyLMEngine()
    from omni.streaming.engines.tone import ToneEngine

    return ToneEngine(seconds_per_char=0.01)


QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?",
             "Tell me a fun fact about the moon.", "What should I cook for dinner tonight?", "Why is the sky blue?",
             "What is two plus three?")


def spoken_questions() -> list[np.ndarray]:
    """The questions spoken by espeak-ng as int16 at 16 kHz (a few seconds each)."""
    from omni.model.embedded.tts import ESPEAK_SAMPLE_RATE, Synthesizer
    from omni.model.pcm import resample

    synth = Synthesizer()
    return [(np.clip(resample(synth.synth(q), ESPEAK_SAMPLE_RATE, 16000), -1, 1) * 32767).astype(np.int16)
            for q in QUESTIONS]


def kv_sizes(engine_session: Any) -> str:
    """The engine session's KV cache: tokens ever written, tokens held now, bytes allocated."""
    state = getattr(engine_session, "state", None)
    if state is None and hasattr(engine_session, "chat"):
        state = engine_session.chat.state
    cache = getattr(state, "cache", None)
    if cache is None:
        return "KV -"
    held = min(cache.length, cache.cfg.capacity)
    extra = f", {len(engine_session.chat.messages)} messages" if hasattr(engine_session, "chat") else ""
    return f"KV {cache.length} written, {held} held, {cache.nbytes() / 2**20:.1f} MB{extra}"


def memory_sizes(hub: Any, user_id: str, root: str) -> str:
    st = hub.memory.stats
    index = hub.memory.user_index(user_id)
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    return (f"memory {st.events} events, {st.notes} notes, RAM index {len(index.events)} events "
            f"{len(index.summaries)} summaries {index.nbytes() / 2**10:.0f} KB, disk {disk / 2**10:.0f} KB")


class GrowthTracer:
    """`hour --trace`: where memory grows after warm-up. Python allocations (numpy arrays' data included) by the
    source line that made them (tracemalloc, `frames` deep), live objects by type (gc), and the C heap (glibc
    mallinfo2: bytes in use vs. free but kept), each as the difference from the snapshot taken at `start`."""

    def __init__(self, frames: int, top: int) -> None:
        self.frames, self.top = frames, top
        self.snap: Any = None
        self.types: dict[str, int] = {}
        self.heap: tuple[int, int, int] = (0, 0, 0)

    @staticmethod
    def type_counts() -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in gc.get_objects():
            name = type(o).__qualname__
            counts[name] = counts.get(name, 0) + 1
        return counts

    @staticmethod
    def c_heap() -> tuple[int, int, int]:
        """glibc's heap: (bytes in use, free bytes kept in arenas, bytes in mmapped blocks); zeros elsewhere."""
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                         "fordblks", "keepcost")]

        try:
            f = ctypes.CDLL(None).mallinfo2
        except (OSError, AttributeError):
            return (0, 0, 0)
        f.restype = MallInfo2
        m = f()
        return (m.uordblks, m.fordblks, m.hblkhd)

    def start(self) -> None:
        import tracemalloc

        gc.collect()
        tracemalloc.start(self.frames)
        self.snap, self.types, self.heap = tracemalloc.take_snapshot(), self.type_counts(), self.c_heap()

    @staticmethod
    def where(filename: str, lineno: int) -> str:
        short = re.sub(r".*/(site-packages|python3\.\d+)/", "", filename)
        return f"{short if short != filename else os.path.relpath(filename)}:{lineno}"

    def report(self) -> None:
        import linecache
        import tracemalloc

        if self.snap is None:
            return
        gc.collect()
        types = self.type_counts()  # before the snapshots' own objects exist
        heap = self.c_heap()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snap.compare_to(self.snap, "traceback")
        grown = sum(s.size_diff for s in stats)
        print(f"    traced Python allocations since the trace began: {grown / 2**20:+.2f} MB "
              f"({sum(s.count_diff for s in stats):+d} blocks); largest growth (innermost call first):")
        for s in sorted(stats, key=lambda s: -s.size_diff)[: self.top]:
            if s.size_diff <= 0:
                break
            frames = list(reversed(s.traceback))  # tracemalloc stores the most recent call last
            code = linecache.getline(frames[0].filename, frames[0].lineno).strip()[:80]
            where = " <- ".join(self.where(f.filename, f.lineno) for f in frames)
            print(f"      {s.size_diff / 2**10:+9.1f} KB {s.count_diff:+6d} blocks  {where}\n{'':28}{code}")
        del stats, snap
        diff = sorted(((n - self.types.get(k, 0), k) for k, n in types.items()), reverse=True)
        print("    objects by type since the trace began: "
              + ", ".join(f"{k} {d:+d}" for d, k in diff[: self.top] if d > 0))
        print(f"    C heap (glibc) since the trace began: in use {(heap[0] - self.heap[0]) / 2**20:+.1f} MB, free but "
              f"kept {(heap[1] - self.heap[1]) / 2**20:+.1f} MB, mmapped {(heap[2] - self.heap[2]) / 2**20:+.1f} MB "
              f"(now {heap[0] / 2**20:.0f} / {heap[1] / 2**20:.0f} / {heap[2] / 2**20:.0f} MB)")


def memory_hub(root: str) -> Any:
    from omni.memory import Memory, MemoryStore
    from omni.model.embedded.text_embedding import TextEmbedder
    from omni.streaming.memory_lane import MemoryHub

    embed = TextEmbedder()
    return MemoryHub(Memory(MemoryStore.open(root), embed=embed), embed)


async def hour(args: argparse.Namespace) -> None:
    import tempfile

    from omni.streaming.frames import AudioFrame
    from omni.streaming.session import Session
    from omni.streaming.session_config import SessionConfig
    from omni.streaming.vad import SileroVad
    from omni.streaming.worker import DeviceWorker

    worker, media = DeviceWorker(), DeviceWorker("media-worker")
    worker.start()
    media.start()
    events: list[dict[str, Any]] = []
    changed = asyncio.Event()
    first_text: list[float] = []

    def emit(e: dict[str, Any]) -> None:
        if not first_text and e.get("type", "").endswith(".delta") and e["type"].startswith("response."):
            first_text.append(time.perf_counter())
        events.append(e)
        del events[:-200]  # keep the benchmark's own memory flat
        changed.set()

    t_start = time.monotonic()
    engine = make_engine(args.engine)
    root = tempfile.mkdtemp(prefix="omni-soak-mem-")
    hub = memory_hub(root) if args.memory else None
    if hub is not None:
        hub.attach(worker, asyncio.get_running_loop())
    session = Session(engine, worker, await media.run(SileroVad), emit,
                      SessionConfig(create_response=False, user_id="soak"), media=media, memory=hub)
    await session.start()
    speech = spoken_questions() if args.speech else []
    silence = np.zeros(320, np.int16)  # 20 ms at 16 kHz
    tracer = GrowthTracer(args.trace, args.trace_top) if args.trace else None
    gc.collect()
    base, lat, first, wall0, cpu0 = rss_mb(), [], [], time.monotonic(), time.process_time()
    print(f"hour soak, {args.engine} engine{' (spoken turns)' if speech else ''}"
          f"{', memory on' if hub else ''}: ready in {wall0 - t_start:.1f} s, RSS at start {base:.1f} MB")
    turns = int(args.minutes * 3)  # a turn every 20 s of audio
    period = max(1, round(args.every * 3))
    for turn in range(turns):
        if tracer is not None and turn == round(args.trace_after * 3):
            tracer.start()
            print(f"  trace begins at {turn / 3:.1f} simulated min: RSS {rss_mb():.1f} MB", flush=True)
        audio = np.zeros(16000 * 20, np.int16)
        if speech:
            q = speech[turn % len(speech)]
            audio[8000 : 8000 + len(q)] = q[: len(audio) - 8000]
        for i in range(1000):
            frame = audio[i * 320 : (i + 1) * 320] if speech else silence
            session.push_audio(AudioFrame(frame, 16000, turn * 20 + i * 0.02))
            await poll_until(lambda: len(session.inbox.media) <= 400)  # as fast as it takes it, never full (500)
        await poll_until(lambda: not len(session.inbox.media), limit=600.0)
        t0 = time.perf_counter()
        if not speech:
            session.handle_client_event({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"turn {turn}"}]}})
        events.clear()
        first_text.clear()
        session.handle_client_event({"type": "response.create"})
        await wait_for_event(events, changed, "response.done", max(WAIT, 600.0))
        lat.append(time.perf_counter() - t0)
        first.append((first_text[0] if first_text else time.perf_counter()) - t0)
        while session.output.read(48000) is not None:  # play it out at once (simulated time)
            pass
        await poll_until(lambda: session.output.read(48000) is None and not session.replying)
        out_of_time = args.wall_minutes and time.monotonic() - wall0 > args.wall_minutes * 60
        if (turn + 1) % period == 0 or out_of_time or turn + 1 == turns:
            gc.collect()
            k = (turn + 1) % period or period
            mem = f"; {memory_sizes(hub, 'soak', root)}" if hub is not None else ""
            cpu, cpu0 = (time.process_time() - cpu0) / k, time.process_time()  # per turn: flat under any load
            print(f"  {(turn + 1) / 3:.1f} simulated min ({turn + 1} turns, {(time.monotonic() - wall0) / 60:.1f} "
                  f"wall min): RSS {rss_mb():.1f} MB (+{rss_mb() - base:.1f}); reply latency: first text p50 "
                  f"{np.median(first[-k:]) * 1e3:.0f} ms, done p50 {np.median(lat[-k:]) * 1e3:.0f} ms max "
                  f"{max(lat[-k:]) * 1e3:.0f} ms; process CPU {cpu:.2f} s per turn, load {os.getloadavg()[0]:.1f}; "
                  f"{kv_sizes(session.engine_session)}{mem}", flush=True)
            if tracer is not None:
                tracer.report()
        if out_of_time:
            print(f"  stopped: --wall-minutes {args.wall_minutes:g} reached after {(turn + 1) / 3:.1f} of "
                  f"{args.minutes:g} simulated minutes")
            break
    await session.close()
    if hub is not None:
        hub.close()
    worker.stop()
    media.stop()


async def start_server(engine: Any, **options: Any) -> tuple[str, Any, Any]:
    from aiohttp import web

    from omni.app.limits import Limits
    from omni.app.realtime_server import SERVER_KEY, ServeOptions
    from omni.app.server_app import build_app
    from omni.app.signaling import restrict_ice_hosts

    restrict_ice_hosts(["127.0.0.1"])
    limits = Limits(max_sessions=64, max_pending=64, connects_per_minute=1e6, connect_burst=10**6)
    app = build_app(engine, ServeOptions(limits=limits, **options))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", app[SERVER_KEY], runner


def live_call_objects() -> str:
    """Peer connections, sessions, calls and media tracks still in memory (client and server side: the
    client runs in this process), counted before any collection of ours."""
    from aiortc import MediaStreamTrack, RTCPeerConnection

    from omni.app.realtime_server import Connection
    from omni.streaming.session import Session

    kinds = {"peer connections": RTCPeerConnection, "sessions": Session, "calls": Connection,
             "tracks": MediaStreamTrack}
    objects = gc.get_objects()
    counts = ", ".join(f"{name} {sum(isinstance(o, cls) for o in objects)}" for name, cls in kinds.items())
    answering = sum(isinstance(o, RTCPeerConnection) and getattr(o.localDescription, "type", "") == "answer"
                    for o in objects)
    return f"{counts} (server-side peer connections {answering})"


async def churn(args: argparse.Namespace) -> None:
    engine = make_engine("test")
    url, server, runner = await start_server(engine, idle_timeout=2.0)
    rss0: float | None = None
    tasks0 = 0
    for cycle in range(args.cycles):
        client = RealtimeClient(url)
        await client.connect()
        await client.wait_for("session.created")
        if cycle % 5 == 4:  # an abrupt death: the transport stops without a goodbye, the idle watchdog reaps it
            for t in client.pc.getTransceivers():
                t.sender._track = None
            await client.pc.close()  # DTLS close may or may not reach the server first: both paths count
        else:
            await client.close()
        del client
        if cycle == 19:  # warm-up done
            await asyncio.sleep(3.0)
            gc.collect()
            rss0, tasks0 = rss_mb(), len(asyncio.all_tasks())
    await poll_until(lambda: not server.connections and not engine.open_sessions and not server._tasks, 0.1, 10.0)
    leftovers = live_call_objects()
    gc.collect()
    assert rss0 is not None
    per = (rss_mb() - rss0) * 1024 / max(1, args.cycles - 20)
    runs = server.metrics.counters.get("gc_runs_total", ("", 0.0))[1]
    gc_ms = server.metrics.counters.get("gc_seconds_total", ("", 0.0))[1] * 1e3 / max(1.0, runs)
    print(f"churn: {args.cycles} cycles (every 5th abrupt): connections left {len(server.connections)}, "
          f"engine sessions open {engine.open_sessions}, tasks {len(asyncio.all_tasks())} (after warm-up "
          f"{tasks0}), left in memory: {leftovers}; RSS {rss0:.1f} -> {rss_mb():.1f} MB = {per:.1f} KB per cycle; "
          f"collection after each teardown: {gc_ms:.2f} ms mean over {runs:g}")
    await runner.cleanup()


def dropped_frames(pts: list[int], frame: int = 960) -> int:
    """20 ms frames missing from a received track: RTP timestamps (48 kHz) that jump by more than one frame."""
    d = np.diff(np.asarray(pts, np.int64))
    return int(np.sum(np.maximum(np.round(d / frame).astype(np.int64) - 1, 0)))


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters for this network namespace (/proc/net/snmp): datagrams received, and those dropped
    because a socket's receive buffer was full (RcvbufErrors) or for any reason (InErrors)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


class LoopLag:
    """How late the event loop runs a timer that asks for 10 ms: a starved loop (a loaded machine) delays every
    packet and frame of every call in this process by as much."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append(time.monotonic() - t - 0.01)

    def summary(self, since: int = 0) -> str:
        x = np.asarray(self.lags[since:] or [0.0]) * 1e3
        return (f"loop lag p50 {np.median(x):.0f} ms p99 {np.percentile(x, 99):.0f} ms max {x.max():.0f} ms, "
                f"{int(np.sum(x > 500))} over 500 ms")


class ConsentLog(logging.Handler):
    """Counts aioice's 'Consent to send expired' (either end): an ICE consent check (RFC 7675) is one STUN request
    without retransmission that fails unless its answer is handled within 0.5 s, and six failures in a row close
    the connection, so a loop that lags by more than 0.5 s for ~30 s loses calls this way."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.expired = 0
        ice = logging.getLogger("aioice.ice")
        ice.setLevel(logging.INFO)
        ice.addHandler(self)
        ice.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        if "Consent to send expired" in record.getMessage():
            self.expired += 1


async def concurrent(args: argparse.Namespace) -> None:
    engine = make_engine("test")
    url, server, runner = await start_server(engine)
    closed: dict[str, str] = {}  # call id -> why the server closed it
    teardown = server.teardown

    def record(conn: Any, reason: str) -> None:
        closed.setdefault(conn.id, reason)
        teardown(conn, reason)

    server.teardown = record
    lag, consent = LoopLag(), ConsentLog()
    udp0 = udp_counters()
    clients = [RealtimeClient(url) for _ in range(args.sessions)]
    await asyncio.gather(*(c.connect() for c in clients))
    replies = [0] * len(clients)
    t0 = time.monotonic()
    end = t0 + args.seconds
    print(f"concurrent: {args.sessions} sessions connected, load average {os.getloadavg()[0]:.2f}", flush=True)

    lost: list[str] = []

    def why(c: RealtimeClient) -> str:
        call = (c.call_url or "").rsplit("/", 1)[-1]
        error = next((e for e in reversed(c.events) if e.get("type") == "error"), None)
        told = f", last error event {error['error'].get('code')}" if error else ""
        return f"server closed it: {closed[call]}{told}" if call in closed else f"server did not close it{told}"

    async def talk(i: int, c: RealtimeClient) -> None:
        while time.monotonic() < end:
            n = len(c.events)
            try:
                c.send({"type": "response.create"})
                await c.wait_for("response.done", start=n)
                await c.wait_for("omni.metrics", start=n)  # played out
            except (TimeoutError, ConnectionError, InvalidStateError) as e:  # the call died: count it, go on
                lost.append(f"session {i} after {replies[i]} replies at {time.monotonic() - t0:.0f} s "
                            f"({type(e).__name__}, peer connection {c.pc.connectionState}; {why(c)})")
                return
            replies[i] += 1

    async def progress() -> None:
        seen = 0
        while True:
            await asyncio.sleep(args.report_every)
            udp = udp_counters()
            print(f"  {time.monotonic() - t0:.0f} s: replies {sum(replies)}, calls lost {len(lost)}, UDP datagrams "
                  f"dropped by the kernel {udp['InErrors'] - udp0['InErrors']}, ICE consents expired "
                  f"{consent.expired}, {lag.summary(seen)}, load average {os.getloadavg()[0]:.2f}", flush=True)
            seen = len(lag.lags)

    loop = asyncio.get_running_loop()

    stalls: list[asyncio.TimerHandle] = []

    def stall() -> None:  # a starved loop, as on a loaded machine, without using the CPU
        time.sleep(args.stall_ms / 1e3)
        stalls[:] = [loop.call_later(args.stall_every, stall)]

    reporter = loop.create_task(progress())
    if args.stall_ms:
        stall()
    await asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
    reporter.cancel()
    elapsed = time.monotonic() - t0
    produced = sum(c.out_track.clock.frames for c in server.connections.values() if c.out_track is not None)
    for handle in stalls:
        handle.cancel()
    udp = {k: v - udp0[k] for k, v in udp_counters().items()}
    gaps = late = frames = missing = 0
    for c in clients:
        ts = np.array([t for t, _ in c.audio])
        frames += len(ts)
        d = np.diff(ts)
        gaps += int(np.sum(d > 0.1))  # a 20 ms frame more than 100 ms after the last: a stall the ear hears
        late += int(np.sum(d > 0.04))
        missing += dropped_frames(c.audio_pts)
    counters = server.metrics.counters
    dropped = counters.get("dropped_input_frames_total", ("", 0.0))[1]
    skipped = int(counters.get("output_frames_skipped_total", ("", 0.0))[1])
    print(f"concurrent: {args.sessions} sessions x {args.seconds:g} s: replies {sum(replies)} "
          f"(min {min(replies)} per session), output frames received {frames}, dropped output frames "
          f"{missing - skipped} (RTP timestamp jumps {missing}, less {skipped} silent frames the server skipped after "
          f"late wake-ups), inter-frame arrival gaps > 40 ms {late}, > 100 ms {gaps}, dropped input frames "
          f"{dropped:g}, device worker busy {server.worker.busy_seconds:.1f} s, load average {os.getloadavg()[0]:.2f}")
    live = len(server.connections)
    print(f"  real-time pace: the {live} calls still open produced {produced} output frames in {elapsed:.0f} s "
          f"({produced / max(1, live * elapsed * 50):.0%} of 50 frames/s each; a loop that cannot keep up sends "
          f"speech late, with contiguous timestamps, and skips silence), received "
          f"{frames / max(1, args.sessions * elapsed * 50):.0%} of real time over all {args.sessions} calls")
    print(f"  UDP (whole process, both ends): {udp['InDatagrams']} datagrams received, {udp['InErrors']} dropped by "
          f"the kernel ({udp['RcvbufErrors']} with a full receive buffer), {udp['SndbufErrors']} send errors; "
          f"{lag.summary()}; ICE consents expired (either end) {consent.expired}")
    print("  server counters: " + ", ".join(f"{k} {v:g}" for k, (_, v) in sorted(counters.items())))
    print(f"  calls lost: {len(lost)}" + "".join(f"\n    {x}" for x in lost))
    print(f"  calls the server closed: {len(closed)}" + "".join(f"\n    {k}: {v}" for k, v in closed.items()))
    lag.task.cancel()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="soak", required=True)
    h = sub.add_parser("hour")
    h.add_argument("--engine", choices=("test", "tiny", "embedded"), default="test",
                   help="test: tones; tiny: random-weight decoder; embedded: the packaged default (Whisper, SmolLM2, "
                        "Piper)")
    h.add_argument("--minutes", type=float, default=60.0, help="simulated minutes of audio (a turn every 20 s)")
    h.add_argument("--every", type=float, default=10.0, help="report every this many simulated minutes")
    h.add_argument("--wall-minutes", type=float, default=0.0, help="stop after this much real time (0: never)")
    h.add_argument("--speech", action="store_true", help="each turn starts with a spoken question (espeak-ng)")
    h.add_argument("--memory", action="store_true", help="the session has long-term memory (a fresh store)")
    h.add_argument("--trace", type=int, default=0, metavar="FRAMES",
                   help="attribute growth after warm-up: at each report print the largest growth in Python "
                        "allocations by call site (tracemalloc, FRAMES deep; slows the run), in live objects by "
                        "type, and in glibc's heap, since the trace began (0: off)")
    h.add_argument("--trace-after", type=float, default=10.0, help="simulated minute at which the trace begins")
    h.add_argument("--trace-top", type=int, default=12, help="how many sites and types to print")
    sub.add_parser("churn").add_argument("--cycles", type=int, default=500)
    c = sub.add_parser("concurrent")
    c.add_argument("--sessions", type=int, default=12)
    c.add_argument("--seconds", type=float, default=600.0)
    c.add_argument("--report-every", type=float, default=60.0, help="print progress every this many seconds")
    c.add_argument("--stall-ms", type=float, default=0.0,
                   help="block the event loop for this long every --stall-every seconds: a starved loop, as on a "
                        "loaded machine, without using the CPU (0: off)")
    c.add_argument("--stall-every", type=float, default=1.0)
    args = p.parse_args()
    asyncio.run({"hour": hour, "churn": churn, "concurrent": concurrent}[args.soak](args))


if __name__ == "__main__":
    main()
