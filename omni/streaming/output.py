"""Assistant speech waiting for the transport: 48 kHz int16 chunks, read in 20 ms frames.

The buffer is a `BLOCK` queue (generation waits when it is full) of (response id, `AudioChunk`) pairs, with
`None` for a chunk where a reply ends; it is flushed on barge-in. It keeps, per
reply, how many samples were actually handed to the transport and which text they speak, so an interrupted
reply is remembered only as far as it was played.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omni.streaming.engine import AudioChunk
from omni.streaming.queues import BoundedQueue, Overflow

OUTPUT_RATE = 48000
Queued = tuple[str, AudioChunk | None]  # (response id, int16 mono chunk at 48 kHz; None: the reply's end)


@dataclass
class PlayLog:
    """What one reply has played: (start sample, end sample, text) per chunk handed out, in order."""

    response_id: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    played: int = 0  # samples handed to the transport

    def text_until(self, sample: int) -> str:
        """The text spoken by the first `sample` samples (a partly played chunk counts by its share of words)."""
        out = []
        for start, end, text in self.spans:
            if sample >= end:
                out.append(text)
            elif sample > start:
                words = text.split(" ")
                keep = int(len(words) * (sample - start) / max(end - start, 1))
                out.append(" ".join(words[:keep]))
                break
        return "".join(out)

    def played_text(self) -> str:
        return self.text_until(self.played)


class OutputAudio:
    """Called from the event loop only: the reply task puts chunks, the transport's track reads frames."""

    def __init__(
        self,
        max_chunks: int = 64,
        on_first_audio: Callable[[str], None] | None = None,
        on_reply_played: Callable[[str], None] | None = None,
    ) -> None:
        self.queue: BoundedQueue[Queued] = BoundedQueue(max_chunks, Overflow.BLOCK, "output-audio")
        self.on_first_audio = on_first_audio
        self.on_reply_played = on_reply_played
        self.logs: dict[str, PlayLog] = {}
        self._current: tuple[str, AudioChunk] | None = None
        self._pos = 0  # samples of _current already read
        self.samples_sent = 0

    def log_for(self, response_id: str) -> PlayLog:
        if response_id not in self.logs:
            self.logs[response_id] = PlayLog(response_id)
            while len(self.logs) > 4:  # truncation only ever concerns the last few replies
                del self.logs[next(iter(self.logs))]
        return self.logs[response_id]

    async def put(self, response_id: str, chunk: AudioChunk | None) -> None:
        """Queue a chunk of the reply's speech (int16 at 48 kHz), or its end (None); waits while full."""
        await self.queue.put((response_id, chunk))

    @property
    def busy(self) -> bool:
        return self._current is not None or len(self.queue) > 0

    def read(self, n: int) -> np.ndarray | None:
        """Up to `n` samples (padded with zeros to `n` when a reply ends mid-frame); None when idle."""
        parts: list[np.ndarray] = []
        got = 0
        while got < n:
            if self._current is None:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                response_id, chunk = item
                if chunk is None:
                    self._reply_end(response_id)
                    continue
                self._current, self._pos = (response_id, chunk), 0
                self._begin(response_id, chunk)
            response_id, cur = self._current
            take = min(n - got, len(cur.pcm) - self._pos)
            parts.append(cur.pcm[self._pos : self._pos + take])
            self._pos += take
            got += take
            self.logs[response_id].played += take
            if self._pos >= len(cur.pcm):
                self._current = None
        if got == 0:
            return None
        self.samples_sent += got
        if got < n:
            parts.append(np.zeros(n - got, np.int16))
        return np.concatenate(parts)

    async def next_chunk(self) -> tuple[str, np.ndarray]:
        """For transports that send speech as it comes (WebSocket events) instead of pacing 20 ms frames: the
        next queued chunk whole, counted as played once returned; a reply's end calls `on_reply_played` on the
        call after its last chunk was returned (so the caller has sent that chunk first)."""
        while True:
            response_id, chunk = await self.queue.get()
            if chunk is None:
                self._reply_end(response_id)
                continue
            self._begin(response_id, chunk)
            if len(chunk.pcm) == 0:  # text after the last audio (the omni engine): logged, nothing to send
                continue
            self.logs[response_id].played += len(chunk.pcm)
            self.samples_sent += len(chunk.pcm)
            return response_id, chunk.pcm

    def _begin(self, response_id: str, chunk: AudioChunk) -> None:
        log = self.log_for(response_id)
        if log.played == 0 and not log.spans and self.on_first_audio is not None:
            self.on_first_audio(response_id)
        log.spans.append((log.played, log.played + len(chunk.pcm), chunk.text))

    def _reply_end(self, response_id: str) -> None:
        if self.on_reply_played is not None:
            self.on_reply_played(response_id)

    def flush(self) -> int:
        """Drop everything not yet read (barge-in); returns the samples dropped."""
        dropped = 0
        if self._current is not None:
            dropped += len(self._current[1].pcm) - self._pos  # its log span stays whole: played counts the share
            self._current = None
        for _, chunk in self.queue.drain():
            if chunk is not None:
                dropped += len(chunk.pcm)
        self.queue.flushed += 1
        return dropped

    def close(self) -> None:
        self.flush()
        self.queue.close()
