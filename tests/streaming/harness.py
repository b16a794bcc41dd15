"""A frames-in/frames-out harness for a Session: feed audio frames, read its speech, collect its events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import numpy as np

from benchmarks.rtc_client import WAIT, wait_for_event
from omni.streaming.engine import Engine
from omni.streaming.frames import AudioFrame
from omni.streaming.session import Session
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker

FRAME = 320  # 20 ms at 16 kHz


E = TypeVar("E", bound=Engine)


class Harness(Generic[E]):
    def __init__(
        self,
        engine: E,
        worker: DeviceWorker,
        vad: SileroVad,
        config: SessionConfig | None = None,
        media: DeviceWorker | None = None,
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.engine = engine
        cfg = config or SessionConfig(turn=TurnConfig(silence_ms=700))  # one turn per test utterance
        self.session = Session(engine, worker, vad, self._emit, cfg, media=media)
        self.played: list[np.ndarray] = []  # every 20 ms frame the fake track read (zeros when idle)
        self._player: asyncio.Task[None] | None = None
        self._media_t = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    async def start(self, play: bool = True) -> None:
        await self.session.start()
        if play:
            self._player = asyncio.get_running_loop().create_task(self._play())

    async def _play(self) -> None:
        """A fake transport track: 20 ms of 48 kHz every 20 ms, silence when nothing is buffered."""
        while True:
            pcm = self.session.read_output(960)
            self.played.append(np.zeros(960, np.int16) if pcm is None else pcm)
            await asyncio.sleep(0.02)

    async def feed(self, pcm: np.ndarray, realtime: bool = True, continuous: bool = False) -> None:
        """Feed int16 16 kHz mono audio as 20 ms frames. Real time: stamped with the session clock, as a
        transport does; otherwise as fast as possible, stamped with media time continuing from the last feed, or
        from the session clock if that is later (a gap in the stream), unless `continuous`: then the audio follows
        the last feed's without a gap however long the runtime took in between (media times independent of the
        machine's speed)."""
        if not continuous:
            self._media_t = max(self._media_t, self.session.clock())
        for i in range(0, len(pcm) - FRAME + 1, FRAME):
            ts = self.session.clock() if realtime else self._media_t
            self._media_t += FRAME / 16000
            self.session.push_audio(AudioFrame(pcm[i : i + FRAME], 16000, ts))
            if realtime:
                await asyncio.sleep(0.02)
            elif i % (FRAME * 10) == 0:
                await asyncio.sleep(0)

    async def silence(self, seconds: float, realtime: bool = True, continuous: bool = False) -> None:
        await self.feed(np.zeros(int(seconds * 16000), np.int16), realtime, continuous)

    async def say(self, pcm: np.ndarray, pause_s: float = 1.0) -> None:
        """One spoken turn as fast as possible: `pcm`, then `pause_s` of silence (more than the 700 ms that
        ends a turn)."""
        await self.feed(pcm, realtime=False)
        await self.silence(pause_s, realtime=False)

    @contextlib.asynccontextmanager
    async def running(self, play: bool = True) -> AsyncIterator[Harness[E]]:
        """The session started, and closed on the way out whatever happens."""
        await self.start(play)
        try:
            yield self
        finally:
            await self.close()

    def reply_text(self) -> str:
        """All the response text deltas, in order."""
        return "".join(e["delta"] for e in self.events if e["type"] == "response.output_text.delta")

    def completed_reply(self) -> str:
        """The text of the one reply, checked against its response.done: completed, transcript equal to it."""
        text = self.reply_text()
        done = next(e for e in self.events if e["type"] == "response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0]["transcript"] == text
        return text

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool] | str, limit: float = WAIT) -> dict[str, Any]:
        return await wait_for_event(self.events, self._changed, pred, limit)

    async def close(self) -> None:
        if self._player is not None:
            self._player.cancel()
            await asyncio.gather(self._player, return_exceptions=True)
        await self.session.close()
