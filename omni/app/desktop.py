"""`omni desktop`: the conversation from this machine's microphone, speaker and (optionally) camera, no browser.

```
mic --PortAudio thread--> MicQueue (50 blocks, drop oldest) --loop--> EchoCanceller (the `aec` extra) or
    HalfDuplexGate --> conversation.push_audio
conversation.read_output(960) --loop, every 10 ms--> SpeakerRing (80 ms) --PortAudio thread--> speaker
camera --decode thread, one frame per video_interval--> conversation.push_video (the session keeps the latest;
    remote: the latest goes up as an input_image when the user starts to speak, at most one a second)
```

The conversation is `LocalConversation` (a `streaming.Session` on an in-process engine, exactly as the server
runs one per WebRTC call) or `RemoteConversation` (omni/app/desktop_remote.py: the Realtime WebSocket API of a
remote `omni serve`). Events print live: the user's words as recognised, the assistant's as spoken, latency.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import numpy as np

from omni.app.deploy_args import API_KEY_ENV
from omni.app.desktop_audio import BLOCK, RATE, EchoCanceller, HalfDuplexGate, MicQueue, SpeakerRing, aec_available
from omni.streaming.engine import Engine
from omni.streaming.frames import AudioFrame, VideoFrame
from omni.streaming.session import Session
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker

log = logging.getLogger("omni.desktop")
FRAME = 960  # 20 ms at 48 kHz: the unit the session's output is read in (as the WebRTC track reads it)
Emit = Callable[[dict[str, Any]], None]


class Conversation(Protocol):
    """What the desktop front end needs from a conversation, local or remote."""

    async def start(self) -> None: ...
    def push_audio(self, pcm: np.ndarray) -> None: ...
    def push_video(self, frame: Any) -> None: ...
    def read_output(self, n: int) -> np.ndarray | None: ...
    async def close(self) -> None: ...


class LocalConversation:
    """A `Session` on an in-process engine, with its own device and media workers and VAD (as `Server` has)."""

    def __init__(self, engine: Engine, emit: Emit, turn: TurnConfig | None = None,
                 instructions: str | None = None, voice: str | None = None) -> None:
        self.engine = engine
        self.emit = emit
        self.config = SessionConfig(turn=turn or TurnConfig(), instructions=instructions, voice=voice)
        self.worker = DeviceWorker()
        self.media = DeviceWorker("media-worker")
        self.session: Session | None = None

    async def start(self) -> None:
        self.worker.start()
        self.media.start()
        vad = await self.media.run(SileroVad)
        self.session = Session(self.engine, self.worker, vad, self.emit, self.config, media=self.media,
                               on_failure=lambda e: log.error("the session failed: %s", e))
        await self.session.start()

    def push_audio(self, pcm: np.ndarray) -> None:
        s = self.session
        if s is not None:
            s.push_audio(AudioFrame(pcm.reshape(1, -1), RATE, s.clock()))

    def push_video(self, frame: Any) -> None:
        s = self.session
        if s is not None:
            s.push_video(VideoFrame(frame, s.clock()))

    def read_output(self, n: int) -> np.ndarray | None:
        return None if self.session is None else self.session.read_output(n)

    async def close(self) -> None:
        try:
            if self.session is not None:
                await self.session.close()
        finally:
            self.worker.stop()
            self.media.stop()


class Printer:
    """Prints the conversation as it happens and keeps the events (tests read them)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.events: list[dict[str, Any]] = []
        self._speaking = False

    def __call__(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        kind = ev.get("type")
        if kind == "conversation.item.input_audio_transcription.completed":
            self._line(f"you: {ev.get('transcript', '')}")
        elif kind == "response.created":
            self._end_reply()
            self.out.write("assistant: ")
            self._speaking = True
        elif kind == "response.output_audio_transcript.delta" and self._speaking:
            self.out.write(str(ev.get("delta", "")))
        elif kind == "response.done":
            status = (ev.get("response") or {}).get("status")
            self._end_reply(" (interrupted)" if status == "cancelled" else "")
        elif kind == "omni.metrics":
            text, audio = ev.get("end_of_speech_to_first_text_ms"), ev.get("end_of_speech_to_first_audio_ms")
            self._line(f"  [turn {ev.get('turn')}: end of speech -> first text {_ms(text)}, first audio {_ms(audio)},"
                       f" barge-in {_ms(ev.get('barge_in_ms'))}]")
        elif kind == "omni.memory.recalled":
            found = ev.get("memories") or ev.get("items") or ev.get("results") or []
            texts = [str(m.get("text", m)) if isinstance(m, dict) else str(m) for m in found]
            self._line(f"  [recalled: {'; '.join(texts)}]")
        elif kind == "error":
            self._line(f"error: {(ev.get('error') or {}).get('message', ev)}")
        self.out.flush()

    def _end_reply(self, suffix: str = "") -> None:
        if self._speaking:
            self.out.write(suffix + "\n")
            self._speaking = False

    def _line(self, text: str) -> None:
        self._end_reply()
        self.out.write(text + "\n")


def _ms(v: object) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.0f} ms"


@dataclass
class DesktopOptions:
    input_device: int | str | None = None
    output_device: int | str | None = None
    camera: str | None = None  # /dev/video0, lavfi:testsrc2=size=320x240:rate=15,realtime, or a video file
    half_duplex: bool = True
    aec: bool = False  # echo cancellation (the `aec` extra) instead of the half-duplex gate: full duplex on speakers
    video_interval: float = SessionConfig().video_interval  # the engine's rate: one frame per this many seconds
    duration: float | None = None  # stop after this many seconds (None: until Ctrl-C)
    # The speaker's device buffer. PortAudio's "low" (about 10-20 ms through ALSA's pulse plugin) underran 6-8
    # times in a 10 s reply on 2 cores at load 10, and every underrun is a click inside a word; 100 ms did not.
    output_latency: float = 0.1
    gate: HalfDuplexGate = field(default_factory=HalfDuplexGate)


class Desktop:
    """Joins the sound devices (and camera) to a conversation; see the module docstring for the data path."""

    def __init__(self, conversation: Conversation, options: DesktopOptions) -> None:
        self.conv = conversation
        self.opts = options
        self.ring = SpeakerRing()
        self.aec = EchoCanceller() if options.aec else None
        self.gate = options.gate if options.half_duplex and self.aec is None else None
        self.status_flags = 0  # PortAudio over/underflows reported to the callbacks
        self.barge_ins: list[int] = []  # samples dropped from the ring at each speech start
        self.speech_marks: list[int] = []  # the ring's played_samples at each speech start (tests: what played after)
        self.camera_frames = 0
        self.mic: MicQueue | None = None
        self.started = asyncio.Event()  # both sound streams are open
        self._stop = threading.Event()
        self._done = asyncio.Event()

    def stop(self) -> None:
        """End `run` (from the event loop)."""
        self._done.set()

    def on_event(self, ev: dict[str, Any]) -> None:
        """Called with every conversation event (before printing): barge-in empties the speaker at once."""
        kind = ev.get("type")
        if kind == "input_audio_buffer.speech_started":
            self.barge_ins.append(self.ring.clear())
            self.speech_marks.append(self.ring.played_samples)

    def _input_callback(self, mic: MicQueue) -> Callable[..., None]:
        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                self.status_flags += 1
            mic.push(indata[:, 0], time.monotonic())
        return callback

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.status_flags += 1
        block = outdata[:, 0]
        self.ring.read_into(block)
        if self.gate is not None:
            self.gate.played(block)
        if self.aec is not None:
            self.aec.played(block)

    async def _pump_mic(self, mic: MicQueue) -> None:
        while True:
            block, t = await mic.get()
            if self.aec is not None:
                block = self.aec.filter(block, t)
            elif self.gate is not None:
                block = self.gate.filter(block, t)
            self.conv.push_audio(block)

    async def _pump_speaker(self) -> None:
        while True:
            while self.ring.free() >= FRAME:
                pcm = self.conv.read_output(FRAME)
                if pcm is None:
                    break
                self.ring.write(pcm)
            await asyncio.sleep(BLOCK / RATE)  # 10 ms: the ring (80 ms) never runs dry between wake-ups

    async def run(self) -> None:
        import sounddevice as sd

        loop = asyncio.get_running_loop()
        mic = self.mic = MicQueue(loop)
        await self.conv.start()
        tasks: list[asyncio.Task[None]] = []
        camera: threading.Thread | None = None
        try:
            with sd.OutputStream(samplerate=RATE, blocksize=BLOCK, channels=1, dtype="int16",
                                 device=self.opts.output_device, callback=self._output_callback,
                                 latency=self.opts.output_latency), \
                 sd.InputStream(samplerate=RATE, blocksize=BLOCK, channels=1, dtype="int16",
                                device=self.opts.input_device, callback=self._input_callback(mic), latency="low"):
                tasks = [loop.create_task(self._pump_mic(mic), name="desktop:mic"),
                         loop.create_task(self._pump_speaker(), name="desktop:speaker")]
                if self.opts.camera:
                    camera = threading.Thread(target=self._camera_loop, args=(loop,), name="camera", daemon=True)
                    camera.start()
                self.started.set()
                try:
                    await asyncio.wait_for(self._done.wait(), self.opts.duration)
                except TimeoutError:
                    pass  # --seconds ran out
        finally:
            self._stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if camera is not None:
                await asyncio.to_thread(camera.join, 5)
            await self.conv.close()

    def _camera_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decode the camera on this thread; hand one frame per `video_interval` to the loop (the session
        converts it on its media worker and keeps only the latest)."""
        from omni.app.desktop_camera import open_camera

        try:
            container = open_camera(self.opts.camera or "")
        except Exception as e:  # av raises several error types for a missing or busy device
            print(f"omni desktop: camera {self.opts.camera!r} unavailable: {e}", file=sys.stderr)
            return
        try:
            last = -1e9
            for frame in container.decode(video=0):
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if now - last >= self.opts.video_interval:
                    last = now
                    self.camera_frames += 1
                    loop.call_soon_threadsafe(self.conv.push_video, frame)
        finally:
            container.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--input-device", metavar="ID", help="microphone: a device number or name (default: the system's)")
    p.add_argument("--output-device", metavar="ID", help="speaker: a device number or name (default: the system's)")
    p.add_argument("--camera", metavar="SPEC", help="a camera: /dev/video0, "
                   "lavfi:testsrc2=size=320x240:rate=15,realtime, or a video file (default: no camera); with --server, "
                   "the latest frame goes to the server as an image when you start to speak (at most 1 a second)")
    p.add_argument("--echo", choices=("auto", "aec", "half", "off"), default="auto",
                   help="the assistant's voice coming back from open speakers: aec cancels it (WebRTC AEC3, the "
                   "`aec` extra; the microphone stays open, so you can talk over the reply), half mutes the "
                   "microphone while the assistant speaks (barge-in by level), off does nothing (headphones); "
                   "auto (default): aec when pywebrtc-audio is installed, else half")
    p.add_argument("--full-duplex", action="store_true", help="the same as --echo off (headphones)")
    p.add_argument("--server", metavar="URL", help="a remote omni server's Realtime WebSocket API (ws://host:port); "
                   "default: run the engine in this process")
    p.add_argument("--api-key", metavar="KEY", help=f"with --server: the server's key (its --api-key) or a client "
                   f"secret; default: ${API_KEY_ENV}")
    p.add_argument("--engine", choices=("embedded", "omni", "tiny", "test"), default="embedded",
                   help="the in-process engine (as `omni serve --engine`; default embedded)")
    p.add_argument("--model", metavar="DIR", help="omni engine: a Qwen2.5-Omni or Qwen3-Omni checkpoint directory")
    p.add_argument("--device", default="cpu", help="omni engine: torch device (default cpu)")
    p.add_argument("--voice", metavar="NAME", help="the assistant's voice (as `omni serve --voice`; default: the "
                   "engine's own, joe for embedded)")
    p.add_argument("--instructions", metavar="TEXT", help="the system instructions (default: the engine's own)")
    p.add_argument("--silence-ms", type=int, default=500, help="silence that ends a turn (default %(default)s)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.set_defaults(run=run)


def _device(v: str | None) -> int | str | None:
    return int(v) if v is not None and v.isdigit() else v


def run(args: argparse.Namespace) -> int:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        print(f"omni desktop: error: no sound library ({e}); pip install -e '.[desktop]' and apt-get install "
              "libportaudio2", file=sys.stderr)
        return 1
    if args.list_devices:
        devices = sd.query_devices()
        if not len(devices):  # (printed an empty line)
            print("omni desktop: no sound devices found (PortAudio sees none on this machine)", file=sys.stderr)
            return 1
        print(devices)
        return 0
    echo = "off" if args.full_duplex else args.echo
    if echo == "auto":
        echo = "half" if aec_available() else "aec"
    elif echo == "aec" and aec_available():
        print(f"omni desktop: error: --echo aec: {aec_available()}", file=sys.stderr)
        return 1
    print(f"omni desktop: echo handling: {echo}", file=sys.stderr)
    printer = Printer()
    conv: Conversation
    try:
        if args.server:
            from omni.app.desktop_remote import RemoteConversation

            key = args.api_key or os.environ.get(API_KEY_ENV) or None
            conv = RemoteConversation(args.server, printer_hook := _Hook(printer), args.instructions, args.voice,
                                      api_key=key)
        else:
            conv, printer_hook = _local(args, printer)
    except (ValueError, RuntimeError) as e:
        print(f"omni desktop: error: {e}", file=sys.stderr)
        return 1
    opts = DesktopOptions(_device(args.input_device), _device(args.output_device), args.camera,
                          half_duplex=echo == "half", aec=echo == "aec", duration=args.seconds)
    desktop = Desktop(conv, opts)
    printer_hook.desktop = desktop
    try:
        asyncio.run(desktop.run())
    except sd.PortAudioError as e:
        print(f"omni desktop: error: sound device: {e} (see --list-devices)", file=sys.stderr)
        return 1
    except ConnectionError as e:  # the remote server refused or cannot be reached (omni.app.desktop_remote)
        print(f"omni desktop: error: {e}", file=sys.stderr)
        return 1
    return 0


class _Hook:
    """Events go to the desktop (barge-in) first, then to the printer."""

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.desktop: Desktop | None = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if self.desktop is not None:
            self.desktop.on_event(ev)
        self.printer(ev)


def _local(args: argparse.Namespace, printer: Printer) -> tuple[LocalConversation, _Hook]:
    from omni.app.serve import ENGINE_THREADS, make_engine

    print(f"omni desktop: loading the {args.engine} engine ...", file=sys.stderr, flush=True)
    threads = ENGINE_THREADS[args.engine]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if args.engine == "omni":
        from omni.app.lm_args import check_device

        check_device(args.device)  # a ValueError the caller prints (was: torch's traceback mid-load)
    engine = make_engine(args.engine, model=args.model, device=args.device)
    hook = _Hook(printer)
    turn = TurnConfig(silence_ms=args.silence_ms).validate()
    return LocalConversation(engine, hook, turn, args.instructions, args.voice), hook
