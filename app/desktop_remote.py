"""`omni desktop --server ws://host:port`: the conversation as a client of a remote omni server's OpenAI
Realtime WebSocket API (GA events): microphone audio goes up as `input_audio_buffer.append` (base64 pcm16,
24 kHz mono, 100 ms a message, server VAD ends the turns), speech comes back as `response.output_audio.delta`.

Written against the protocol while the server side (`/v1/realtime`) is built on another branch: not yet run
against a server. The camera is not sent in this mode (the protocol takes still images with a typed turn).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from model.pcm import StreamingResampler, to_int16

log = logging.getLogger("omni.desktop")
API_RATE = 24000  # the Realtime API's pcm16 rate, both ways
APPEND_SAMPLES = 2400  # 100 ms per input_audio_buffer.append: 10 messages a second, about 6.4 kB each
MAX_OUTPUT = 48000 * 30  # 30 s of received speech waiting to play; more is dropped (oldest first) and logged


class RemoteConversation:
    """A Realtime WebSocket session as the desktop's `Conversation` (see app/desktop.py)."""

    def __init__(self, url: str, emit: Callable[[dict[str, Any]], None], instructions: str | None = None,
                 voice: str | None = None, model: str = "omni") -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"--server must be a ws:// or wss:// URL of an omni server, got {url!r}")
        self.url = url.rstrip("/") + f"/v1/realtime?model={model}"
        self.emit = emit
        self.instructions, self.voice = instructions, voice
        self._up = StreamingResampler(48000, API_RATE)
        self._down = StreamingResampler(API_RATE, 48000)
        self._pending = np.zeros(0, np.int16)
        self._out: deque[np.ndarray] = deque()
        self._out_samples = 0
        self._send: asyncio.Queue[str] = asyncio.Queue(maxsize=100)  # 10 s of audio; full: drop, see push_audio
        self._tasks: list[asyncio.Task[None]] = []
        self._http: Any = None
        self._ws: Any = None

    async def start(self) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, headers={"Authorization": "Bearer omni"},
                                               max_msg_size=16 * 1024 * 1024)
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
        return None  # see the module docstring

    def read_output(self, n: int) -> np.ndarray | None:
        if self._out_samples < n:
            return None
        parts, need = [], n
        while need:
            head = self._out[0]
            take = min(need, len(head))
            parts.append(head[:take])
            if take == len(head):
                self._out.popleft()
            else:
                self._out[0] = head[take:]
            need -= take
        self._out_samples -= n
        return np.concatenate(parts)

    def _clear_output(self) -> None:
        self._out.clear()
        self._out_samples = 0

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
                pcm = to_int16(self._down.push(np.frombuffer(base64.b64decode(ev["delta"]), "<i2")))
                self._out.append(pcm)
                self._out_samples += len(pcm)
                while self._out_samples > MAX_OUTPUT:
                    self._out_samples -= len(self._out.popleft())
                continue  # audio is not printed
            if kind == "input_audio_buffer.speech_started":
                self._clear_output()  # barge-in: what is queued here would otherwise still play
            self.emit(ev)
        self.emit({"type": "error", "error": {"message": f"the server closed the connection ({self._ws.close_code})"}})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
