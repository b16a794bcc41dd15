"""The audio plumbing of `omni desktop`: what sits between PortAudio's callback threads and the event loop.

PortAudio calls its callbacks on its own real-time thread every block (10 ms here); a callback that blocks
makes the device drop or repeat audio. So the microphone callback only copies its block into a bounded deque
(the oldest block goes when it is full) and asks the loop to wake up; the speaker callback only copies out of
a ring buffer that the loop fills, under a lock held for one memcpy. Barge-in clears the ring.

Echo: with open speakers the microphone hears the assistant. `HalfDuplexGate` (the default) mutes the
microphone while the assistant is heard and for a short hangover after, unless the microphone is clearly
louder than what is being played (the user talking over it: barge-in by level).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

RATE = 48000  # both streams; PulseAudio and most devices run at 48 kHz natively, the session resamples input
BLOCK = 480  # 10 ms blocks: half the 20 ms frame the session's output pacing uses, so a clear lands within a frame


class MicQueue:
    """Microphone blocks from the PortAudio thread to the event loop. Bounded: `capacity` blocks (default 50 =
    0.5 s); when full the oldest block is dropped and counted, so a stalled loop loses audio, not latency."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 50) -> None:
        self._loop = loop
        self._blocks: deque[tuple[np.ndarray, float]] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self.dropped = 0

    def push(self, block: np.ndarray, t: float) -> None:
        """From the callback thread: never blocks (deque append is atomic; the wake-up is a self-pipe write)."""
        if len(self._blocks) == self._blocks.maxlen:
            self.dropped += 1
        self._blocks.append((block.copy(), t))
        self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> tuple[np.ndarray, float]:
        while not self._blocks:
            self._ready.clear()
            if not self._blocks:
                await self._ready.wait()
        return self._blocks.popleft()


class SpeakerRing:
    """int16 ring buffer of the assistant's speech for the speaker callback. The loop writes what fits; the
    callback reads a block, padding with silence when it runs dry; `clear` (barge-in) drops everything."""

    def __init__(self, capacity: int = 4 * 960) -> None:
        # 80 ms: enough to ride out a late loop wake-up on a busy machine, small enough that what is already
        # here when the user barges in is a frame or two.
        self._buf = np.zeros(capacity, np.int16)
        self._start = 0
        self._size = 0
        self._lock = threading.Lock()
        self.played_samples = 0  # non-silent samples handed to the device, for tests and the level meter

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def free(self) -> int:
        with self._lock:
            return len(self._buf) - self._size

    def available(self) -> int:
        with self._lock:
            return self._size

    def write(self, pcm: np.ndarray) -> int:
        """Append as much of `pcm` as fits; returns how many samples were taken."""
        with self._lock:
            n = min(len(pcm), len(self._buf) - self._size)
            end = (self._start + self._size) % len(self._buf)
            first = min(n, len(self._buf) - end)
            self._buf[end : end + first] = pcm[:first]
            self._buf[: n - first] = pcm[first:n]
            self._size += n
            return n

    def read_into(self, out: np.ndarray) -> int:
        """Fill `out` (int16 [n]) from the ring, silence after what there is; returns the samples taken."""
        with self._lock:
            n = min(len(out), self._size)
            first = min(n, len(self._buf) - self._start)
            out[:first] = self._buf[self._start : self._start + first]
            out[first:n] = self._buf[: n - first]
            self._start = (self._start + n) % len(self._buf)
            self._size -= n
        out[n:] = 0
        self.played_samples += int(np.count_nonzero(out[:n]))
        return n

    def clear(self) -> int:
        """Drop everything queued (barge-in); returns how many samples were dropped."""
        with self._lock:
            dropped, self._size, self._start = self._size, 0, 0
            return dropped


def rms(block: np.ndarray) -> float:
    """Root mean square of int16 samples, in int16 units."""
    x = block.astype(np.float32)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


@dataclass
class HalfDuplexGate:
    """Mutes the microphone while the assistant is heard, so it does not answer (or interrupt) itself.

    The speaker level is a peak that decays by `decay` per 10 ms block (0.7: -15 dB in 100 ms, about a room's
    echo tail and PulseAudio's 20-60 ms of buffering); for `hangover` seconds after the last audible block the
    gate stays shut too. Barge-in by level: a block passes when it is `barge_ratio` times (9.5 dB) louder than
    the echo expected from what is playing, and above `floor`. The echo path's gain (microphone level over
    speaker level) is learnt from the blocks the gate holds back, starting from 1 (as loud as played: nothing
    passes that could be echo) and moving 10 % of the way per block, so a quiet echo path (a headset, a laptop
    whose casing takes 10-20 dB off) lets a normal voice through within about 0.2 s of assistant speech."""

    hangover: float = 0.3
    barge_ratio: float = 3.0
    floor: float = 300.0  # int16 RMS (-41 dBFS): below this a block is room noise, never a barge-in
    decay: float = 0.7
    audible: float = 30.0  # int16 RMS (-61 dBFS): quieter playback is silence as far as echo goes
    learn_rate: float = 0.1
    echo_gain: float = 1.0
    _level: float = 0.0
    _last_audible: float = -1e9
    suppressed_blocks: int = 0
    suppressed_loud: int = 0  # held-back blocks above `floor`: echo that would have reached the session

    def played(self, block: np.ndarray, t: float | None = None) -> None:
        """The speaker callback reports each block it played."""
        level = rms(block)
        self._level = max(level, self._level * self.decay)
        if level > self.audible:
            self._last_audible = time.monotonic() if t is None else t

    def speaking(self, t: float | None = None) -> bool:
        now = time.monotonic() if t is None else t
        return now - self._last_audible < self.hangover

    def filter(self, block: np.ndarray, t: float | None = None) -> np.ndarray:
        """The microphone block to send: itself, or silence of the same length while the assistant is heard."""
        if not self.speaking(t):
            return block
        level, ref = rms(block), self._level
        if level > self.floor and level > self.barge_ratio * self.echo_gain * ref:
            return block
        if ref > self.floor:  # a reference loud enough to measure the echo path against
            self.echo_gain += self.learn_rate * (min(level / ref, 4.0) - self.echo_gain)
        self.suppressed_blocks += 1
        self.suppressed_loud += level > self.floor
        return np.zeros_like(block)
