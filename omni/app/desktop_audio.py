"""The audio plumbing of `omni desktop`: what sits between PortAudio's callback threads and the event loop.

PortAudio calls its callbacks on its own real-time thread every block (10 ms here); a callback that blocks
makes the device drop or repeat audio. So the microphone callback only copies its block into a bounded deque
(the oldest block goes when it is full) and asks the loop to wake up; the speaker callback only copies out of
a ring buffer that the loop fills, under a lock held for one memcpy. Barge-in clears the ring.

Echo: with open speakers the microphone hears the assistant. `HalfDuplexGate` (the default) mutes the
microphone while the assistant is heard and for a short hangover after, unless the microphone is clearly
louder than what is being played (the user talking over it: barge-in by level). `EchoCanceller` (when the
`aec` extra, pywebrtc-audio, is installed) removes the assistant's voice from the microphone instead: WebRTC's
AEC3 with what the speaker played as the reference, so the microphone stays open (full duplex with loudspeakers)
and the user's voice barges in through the session's own VAD.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

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

    def __init__(self, capacity: int = 10 * 960) -> None:
        # 200 ms: rides out a late loop wake-up on a busy machine (at load 10 on 2 cores an 80 ms ring ran dry
        # inside words). Barge-in clears it, so its size adds nothing to the barge-in time; what it costs is
        # that the session counts audio as played up to 200 ms before the speaker plays it (truncation).
        self._buf = np.zeros(capacity, np.int16)
        self._start = 0
        self._size = 0
        self._lock = threading.Lock()
        self.played_samples = 0  # non-silent samples handed to the device, for tests and the level meter
        self.underruns = 0  # blocks the ring could fill only in part: the loop fell behind mid-speech

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
        self.underruns += 0 < n < len(out)
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


class HalfDuplexGate:
    """Mutes the microphone while the assistant is heard, so it does not answer (or interrupt) itself.

    Reference: the loudest speaker block of the last `window` blocks (30 x 10 ms = 0.3 s), because what the
    speaker callback hands over comes back through the device's buffer and the room later: PulseAudio alone
    adds 20-200 ms. For `hangover` seconds after the last audible block the gate stays shut too.

    Barge-in by level: a block passes when it is `barge_ratio` times (9.5 dB) louder than the echo expected
    from the reference, and above `floor`. The echo path's gain (microphone level over reference) is measured
    afresh over the first `learn` seconds (0.5) each time the assistant starts to be heard, as the loudest
    ratio seen; the user has just finished their turn then, so what comes back is echo. Everything is held
    back during those 0.5 s; after them the gain stays fixed until the assistant falls silent, so the user's
    own voice is never taken for echo. `min_gain` (0.05, -26 dB) keeps a block that is 2 x quieter than the
    playback from counting as a barge-in where no echo was measured at all (a headset)."""

    def __init__(self, hangover: float = 0.3, barge_ratio: float = 3.0, floor: float = 300.0,
                 window: int = 30, learn: float = 0.5, min_gain: float = 0.05) -> None:
        self.hangover = hangover
        self.barge_ratio = barge_ratio
        self.floor = floor  # int16 RMS (-41 dBFS): below this a block is room noise, never a barge-in
        self.audible = 30.0  # int16 RMS (-61 dBFS): quieter playback is silence as far as echo goes
        self.learn = learn
        self.min_gain = min_gain
        self.echo_gain = 1.0  # before anything is measured: as loud as played, nothing that could be echo passes
        self._levels = np.zeros(window, np.float32)  # written by the speaker thread, one slot per block
        self._slot = 0
        self._last_audible = -1e9
        self._heard_since: float | None = None  # when the assistant started to be heard (None: silent)
        self._loudest = 0.0
        self.suppressed_blocks = 0
        self.suppressed_loud = 0  # held-back blocks above `floor`: echo that would have reached the session

    def played(self, block: np.ndarray, t: float | None = None) -> None:
        """The speaker callback reports each block it played."""
        level = rms(block)
        self._levels[self._slot] = level
        self._slot = (self._slot + 1) % len(self._levels)
        if level > self.audible:
            self._last_audible = time.monotonic() if t is None else t

    def speaking(self, t: float | None = None) -> bool:
        now = time.monotonic() if t is None else t
        return now - self._last_audible < self.hangover

    def filter(self, block: np.ndarray, t: float | None = None) -> np.ndarray:
        """The microphone block to send: itself, or silence of the same length while the assistant is heard."""
        now = time.monotonic() if t is None else t
        if not self.speaking(now):
            self._heard_since = None
            return block
        if self._heard_since is None:
            self._heard_since, self._loudest = now, 0.0
        level, ref = rms(block), float(self._levels.max())
        if now - self._heard_since < self.learn:
            if ref > self.floor:  # a reference loud enough to measure the echo path against
                self._loudest = max(self._loudest, min(level / ref, 4.0))
                self.echo_gain = max(self._loudest, self.min_gain)
        elif level > self.floor and level > self.barge_ratio * self.echo_gain * ref:
            return block
        self.suppressed_blocks += 1
        self.suppressed_loud += level > self.floor
        return np.zeros_like(block)


def aec_available() -> str | None:
    """None when `EchoCanceller` can run here, else why not (the `aec` extra is missing)."""
    try:
        import pywebrtc_audio  # noqa: F401
    except ImportError as e:
        return f"no echo canceller ({e}): pip install -e '.[aec]' (pywebrtc-audio)"
    return None


class EchoCanceller:
    """Acoustic echo cancellation for open speakers: WebRTC's AEC3 (the `aec` extra, pywebrtc-audio).

    The speaker callback hands over each block it plays (`played`, on PortAudio's thread: an append to a
    bounded deque, never blocking); the event loop cleans each microphone block (`filter`) against the next
    played block, one 10 ms block of each per call, as AEC3 wants its render and capture streams in step. The
    delay between a block being handed to the device and its echo reaching the microphone (the device buffers
    and the room: 100-300 ms here) is found by AEC3's own delay estimator. When the speaker is silent (nothing
    queued) the reference is silence. AEC3 is not thread-safe: only the loop calls `filter`.

    Counters for tests and the benchmark: the microphone's and the output's energy over blocks whose reference
    was audible (`near_energy`, `out_energy`: their ratio is the echo return loss enhancement while nothing but
    echo comes in), and the time spent in AEC3 (`seconds`, `blocks`)."""

    def __init__(self, rate: int = RATE, block: int = BLOCK, backlog: int = 50) -> None:
        why = aec_available()
        if why:
            raise RuntimeError(why)
        from pywebrtc_audio import EchoCanceller as Aec3

        self._aec = Aec3(sample_rate=rate, num_channels=1)
        self.block = block
        self._far: deque[np.ndarray] = deque(maxlen=backlog)  # 0.5 s: a stalled loop drops the oldest
        self._silence = np.zeros(block, np.int16)
        self.audible = 30.0  # int16 RMS, as HalfDuplexGate: quieter playback counts as silence
        self.near_energy = 0.0
        self.out_energy = 0.0
        self.seconds = 0.0
        self.blocks = 0
        self.far_dropped = 0  # played blocks dropped unpaired (the loop stalled over 0.5 s)
        # (fewest, most) played blocks waiting for their microphone block: a steady span means a steady pairing
        self.backlog = (1 << 30, 0)

    def played(self, block: np.ndarray, t: float | None = None) -> None:
        """The speaker callback reports each block it played (copied: PortAudio reuses its buffer)."""
        if len(self._far) == self._far.maxlen:
            self.far_dropped += 1
        self._far.append(block.copy())

    def filter(self, block: np.ndarray, t: float | None = None) -> np.ndarray:
        """The microphone block with the assistant's echo removed (int16, same length)."""
        if len(block) != self.block:
            raise ValueError(f"the echo canceller takes {self.block}-sample blocks, got {len(block)}")
        self.backlog = (min(self.backlog[0], len(self._far)), max(self.backlog[1], len(self._far)))
        far = self._far.popleft() if self._far else self._silence
        start = time.perf_counter()
        out = self._aec.process(np.ascontiguousarray(block, np.int16), far)
        self.seconds += time.perf_counter() - start
        self.blocks += 1
        if rms(far) > self.audible:
            self.near_energy += float(np.square(block, dtype=np.float64).sum())
            self.out_energy += float(np.square(out, dtype=np.float64).sum())
        return out

    def reduction_db(self) -> float:
        """Echo energy removed, in dB, over the blocks with audible playback so far (0 before any)."""
        if self.near_energy <= 0:
            return 0.0
        return float(10 * np.log10(self.near_energy / max(self.out_energy, 1.0)))
