"""An aiortc client of `omni serve` for the loopback benchmark and tests: sends speech as a paced 48 kHz
microphone track, records the assistant's audio track and the events of the `oai-events` data channel.

A bias to know when reading its times: a received frame comes out of aiortc's audio jitter buffer only once 4 later
frames have arrived (prefetch 4: 80 ms on a clean loopback), so the assistant's audio reaches `audio` about 80 ms
after its RTP packet did. That delay is this client's, as a browser's adaptive jitter buffer (NetEq) is the
browser's; it is left as aiortc sets it (benchmarks/rtc_output.py `--prefetch` measures it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from omni.app.frame_clock import FrameClock, mono_frame

RATE = 48000
FRAME = 960
WAIT = 30.0  # generous: other test suites share the 2 cores


async def wait_for_event(
    events: list[dict[str, Any]],
    changed: asyncio.Event,
    pred: Callable[[dict[str, Any]], bool] | str,
    limit: float = WAIT,
    start: int = 0,
) -> dict[str, Any]:
    """The first event from index `start` on that matches `pred` (an event type, or a predicate), waiting up
    to `limit` seconds for it; `changed` is set whenever an event is appended."""
    check = (lambda e: e["type"] == pred) if isinstance(pred, str) else pred
    seen = start

    async def scan() -> dict[str, Any]:
        nonlocal seen
        while True:
            for e in events[seen:]:
                seen += 1
                if check(e):
                    return e
            changed.clear()
            await changed.wait()

    return await asyncio.wait_for(scan(), limit)



class ScriptedMic(MediaStreamTrack):
    """A microphone that plays queued int16 48 kHz clips in real time, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._clips: list[np.ndarray] = []
        self._pos = 0
        self._clock = FrameClock(RATE, FRAME)
        self.sent: list[tuple[float, float]] = []  # (when the frame's audio ends, its RMS): the user's timeline

    def say(self, pcm48k: np.ndarray) -> None:
        self._clips.append(pcm48k.astype(np.int16))

    @property
    def idle(self) -> bool:
        return not self._clips

    def _read(self, n: int) -> np.ndarray | None:
        if not self._clips:
            return None
        clip = self._clips[0]
        out = np.zeros(n, np.int16)
        take = clip[self._pos : self._pos + n]
        out[: len(take)] = take
        self._pos += n
        if self._pos >= len(clip):
            self._clips.pop(0)
            self._pos = 0
        return out

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts, pcm = await self._clock.next_frame(self._read)
        out = np.zeros(FRAME, np.int16) if pcm is None else pcm
        sent = time.monotonic()  # the frame is sent as its first sample is due; its speech lasts FRAME samples
        self.sent.append((sent + FRAME / RATE, float(np.sqrt(np.mean(np.square(out / 32768.0))))))
        return mono_frame(out, RATE, pts)


def playout_delays(arrivals: list[float], frame_s: float = FRAME / RATE) -> list[float]:
    """Per received frame, how long it waits in a receiver that plays every frame it gets, in order and back to back,
    and plays silence only while it has none (it never waits on a timestamp gap with a frame in hand, as a jitter
    buffer with frames queued above its target does not): a frame starts when it has arrived and the one before it
    has finished. Frames sent faster than real time (a burst after a stall) queue up here, and everything after them
    waits as long, until the sender leaves a gap in its sending; that wait is what the user hears as added latency."""
    out: list[float] = []
    free = float("-inf")  # when the receiver is done with the frames so far
    for t in arrivals:
        start = max(t, free)
        out.append(start - t)
        free = start + frame_s
    return out


class RealtimeClient:
    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.call_secret: str | None = None  # hangs up the call (DELETE with X-Omni-Call-Secret)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = ScriptedMic()
        self.events: list[dict[str, Any]] = []
        self.audio: list[tuple[float, float]] = []  # (arrival time, RMS of the frame) of the assistant's track
        self.audio_pts: list[int] = []  # the RTP timestamps (48 kHz) of those frames: a jump is frames not sent
        # (lost, or silence the server's FrameClock skipped after a stall: omni_output_frames_skipped_total)
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel_open = asyncio.Event()
        self.channel.on("open", self.channel_open.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.call_url: str | None = None

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            x = frame.to_ndarray().astype(np.float32) / 32768.0
            self.audio.append((time.monotonic(), float(np.sqrt(np.mean(x * x)))))
            self.audio_pts.append(int(frame.pts or 0))

    async def connect(self, with_audio: bool = True, session: dict[str, Any] | None = None) -> None:
        """Offer and answer; `session` given: the GA multipart form (fields `sdp` and `session`)."""
        if with_audio:
            self.pc.addTrack(self.mic)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        body_args: dict[str, Any] = {"data": sdp, "headers": {"Content-Type": "application/sdp", **self.headers}}
        if session is not None:
            form = aiohttp.FormData(default_to_multipart=True)  # as a browser's FormData posts it
            form.add_field("sdp", sdp)
            form.add_field("session", json.dumps(session))
            body_args = {"data": form, "headers": dict(self.headers)}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base_url}/v1/realtime/calls", **body_args) as r:
                body = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"offer rejected: {r.status} {body}")
                self.call_url = r.headers["Location"]
                self.call_secret = r.headers.get("X-Omni-Call-Secret")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await asyncio.wait_for(self.channel_open.wait(), WAIT)

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool] | str, limit: float = WAIT, start: int = 0
    ) -> dict[str, Any]:
        return await wait_for_event(self.events, self._changed, pred, limit, start)

    def loud_since(self, t: float, level: float = 0.02) -> int:
        return sum(1 for ts, rms in self.audio if ts >= t and rms > level)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
