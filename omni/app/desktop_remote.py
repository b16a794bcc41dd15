"""`omni desktop --server ws://host:port`: the conversation as a client of a remote omni server's OpenAI
Realtime WebSocket API (GA events): microphone audio goes up as `input_audio_buffer.append` (base64 pcm16,
24 kHz mono, 100 ms a message, server VAD ends the turns), speech comes back as `response.output_audio.delta`.

Barge-in: at `input_audio_buffer.speech_started` (the server has cancelled the reply) the speech queued here is
dropped, later deltas of the cut reply are ignored, and the server is told how much of the item was handed to
the speaker (`conversation.item.truncate`, so the conversation keeps only the words heard). Tested against a
real server in tests/app/test_desktop.py.

Camera: the protocol takes still images as `input_image` parts of a user message, so the latest camera frame
goes up as a JPEG (`conversation.item.create`, an image-only user message) when the user starts to speak
(`input_audio_buffer.speech_started`): the server adds it to the turn being spoken, and the engine sees it before
the turn's words. At most one image per `image_interval` seconds (1 s), none while no new frame came.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from omni.model.pcm import StreamingResampler, to_int16

log = logging.getLogger("omni.desktop")
API_RATE = 24000  # the Realtime API's pcm16 rate, both ways
APPEND_SAMPLES = 2400  # 100 ms per input_audio_buffer.append: 10 messages a second, about 6.4 kB each
MAX_OUTPUT = 48000 * 30  # 30 s of received speech waiting to play; more is dropped (oldest first) and logged


class RemoteConversation:
    """A Realtime WebSocket session as the desktop's `Conversation` (see omni/app/desktop.py)."""

    def __init__(self, url: str, emit: Callable[[dict[str, Any]], None], instructions: str | None = None,
                 voice: str | None = None, model: str = "omni", image_interval: float = 1.0,
                 api_key: str | None = None) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"--server must be a ws:// or wss:// URL of an omni server, got {url!r}")
        self.url = url.rstrip("/") + f"/v1/realtime?model={model}"
        self.emit = emit
        self.api_key = api_key  # the server's key (or a client secret); None: a server without keys
        self.instructions, self.voice = instructions, voice
        self._up = StreamingResampler(48000, API_RATE)
        self._down = StreamingResampler(API_RATE, 48000)
        self._pending = np.zeros(0, np.int16)
        self._out: deque[tuple[str, np.ndarray]] = deque()  # (assistant item id, 48 kHz speech)
        self._out_samples = 0
        self._read: dict[str, int] = {}  # samples of each item handed to the speaker
        self._reply: str | None = None  # the response being made (response.created .. response.done)
        self._cut: set[str] = set()  # responses interrupted by a barge-in: their late deltas are dropped
        self.truncations: list[tuple[str, int]] = []  # (item id, audio_end_ms) sent at each barge-in
        self._send: asyncio.Queue[str] = asyncio.Queue(maxsize=100)  # 10 s of audio; full: drop, see push_audio
        self._tasks: list[asyncio.Task[None]] = []
        self._frame: Any = None  # the latest camera frame not sent yet (an av.VideoFrame)
        self.image_interval = image_interval
        self._last_image = -1e9
        self.images_sent = 0
        self._image_task: asyncio.Future[None] | None = None
        self._http: Any = None
        self._ws: Any = None

    async def start(self) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            self._ws = await self._http.ws_connect(self.url, headers=headers, max_msg_size=16 * 1024 * 1024)
        except aiohttp.WSServerHandshakeError as e:
            await self._http.close()
            why = {401: "the server wants a valid API key: --api-key KEY or $OMNI_API_KEY",
                   403: "the server refused this client"}.get(e.status, e.message)
            raise ConnectionError(f"{self.url}: {e.status}: {why}") from None
        except aiohttp.ClientError as e:
            await self._http.close()
            raise ConnectionError(f"{self.url}: cannot connect: {e}") from None
        session: dict[str, Any] = {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": API_RATE}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcm", "rate": API_RATE}},
        }}
        if self.voice:
            session["audio"]["output"]["voice"] = self.voice
        if self.instructions:
            session["instructions"] = self.instructions
        await self._ws.send_str(json.dumps({"type": "session.update", "session": session}))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._reader()), loop.create_task(self._writer())]

    def push_audio(self, pcm: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, to_int16(self._up.push(pcm))])
        while len(self._pending) >= APPEND_SAMPLES:
            piece, self._pending = self._pending[:APPEND_SAMPLES], self._pending[APPEND_SAMPLES:]
            audio = base64.b64encode(piece.astype("<i2").tobytes()).decode()
            msg = {"type": "input_audio_buffer.append", "audio": audio}
            try:
                self._send.put_nowait(json.dumps(msg))
            except asyncio.QueueFull:
                log.warning("the server is not keeping up: dropped 100 ms of microphone audio")

    def push_video(self, frame: Any) -> None:
        self._frame = frame  # sent with the next user turn (see the module docstring)

    async def _send_image(self) -> None:
        """The latest camera frame as an image-only user message, joining the turn the user is speaking."""
        frame, now = self._frame, time.monotonic()
        if frame is None or now - self._last_image < self.image_interval:
            return
        from omni.app.desktop_camera import jpeg_data_url

        self._frame, self._last_image = None, now
        url = await asyncio.to_thread(jpeg_data_url, frame)  # 10-20 ms of encoding: off the loop
        msg = {"type": "conversation.item.create",
               "item": {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": url}]}}
        try:
            self._send.put_nowait(json.dumps(msg))
            self.images_sent += 1
        except asyncio.QueueFull:
            log.warning("the server is not keeping up: did not send the camera image")

    def read_output(self, n: int) -> np.ndarray | None:
        if self._out_samples < n:
            return None
        parts, need = [], n
        while need:
            item, head = self._out[0]
            take = min(need, len(head))
            parts.append(head[:take])
            self._read[item] = self._read.get(item, 0) + take
            if take == len(head):
                self._out.popleft()
            else:
                self._out[0] = (item, head[take:])
            need -= take
        self._out_samples -= n
        return np.concatenate(parts)

    def _barge_in(self) -> None:
        """The user spoke: drop the queued speech, ignore the rest of the reply, report what was played."""
        playing = self._out[0][0] if self._out else None
        if self._reply is not None:
            self._cut.add(self._reply)
        self._out.clear()
        self._out_samples = 0
        self._down = StreamingResampler(API_RATE, 48000)  # the next reply starts from a clean filter state
        if playing is not None and self._read.get(playing):
            end_ms = self._read[playing] * 1000 // 48000
            self.truncations.append((playing, end_ms))
            msg = {"type": "conversation.item.truncate", "item_id": playing, "content_index": 0, "audio_end_ms": end_ms}
            try:
                self._send.put_nowait(json.dumps(msg))
            except asyncio.QueueFull:
                log.warning("the server is not keeping up: could not report the interrupted reply's end")

    def _speech(self, ev: dict[str, Any]) -> None:
        if ev.get("response_id") in self._cut:
            return
        pcm = to_int16(self._down.push(np.frombuffer(base64.b64decode(ev["delta"]), "<i2")))
        self._out.append((str(ev.get("item_id")), pcm))
        self._out_samples += len(pcm)
        while self._out_samples > MAX_OUTPUT:
            self._out_samples -= len(self._out.popleft()[1])
            log.warning("more than %d s of speech waiting to play: dropped the oldest", MAX_OUTPUT // 48000)

    async def _writer(self) -> None:
        while True:
            await self._ws.send_str(await self._send.get())

    async def _reader(self) -> None:
        import aiohttp

        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            kind = ev.get("type")
            if kind == "response.output_audio.delta":
                self._speech(ev)
                continue  # audio is not printed
            if kind == "response.created":
                self._reply = ev["response"]["id"]
            elif kind == "response.done":
                self._reply = None
            elif kind == "input_audio_buffer.speech_started":
                self._barge_in()
                self._image_task = asyncio.ensure_future(self._send_image())  # the barge-in must not wait for it
            self.emit(ev)
        self.emit({"type": "error", "error": {"message": f"the server closed the connection ({self._ws.close_code})"}})

    async def close(self) -> None:
        for t in [*self._tasks, *([self._image_task] if self._image_task else [])]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
