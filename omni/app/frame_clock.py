"""Real-time pacing of an outgoing WebRTC audio track (the assistant's speech, the test client's microphone).

A paced track hands aiortc one 20 ms frame per 20 ms of wall time, stamped with a timestamp (pts, in samples)
that the receiver schedules playback by. When the event loop stalls (a full garbage collection, a long prefill,
a loaded machine), every frame that fell due meanwhile is late. Sending them all at once as soon as the loop runs
again, with contiguous timestamps (what the clock did before), keeps the sender on the wall clock but moves the
stall into the receiver: its jitter buffer gets the stall's worth of frames in one go, plays them in order, and
the user hears everything after that, for the rest of the call, late by the stall (a longer stall adds to it),
and a barge-in leaves that much speech queued at the receiver, already counted as played by the server.

The rule here, by what the frame carries:

- Silence (nothing queued to play): frames that fell due are not sent; the next frame's timestamp jumps to the
  wall clock's slot (`skipped` counts the frames left out). The receiver sees a gap in the timestamps with no
  packets for it, which is what an Opus DTX or comfort-noise sender produces for a pause; jitter buffers play it
  as silence (or conceal it) and stay on time. Nothing to play is lost.
- Speech (a talkspurt, frames carrying the reply): never dropped and never cut; its timestamps stay contiguous,
  so no gap opens inside a word. A late frame and the ones after it go back to back for at most MAX_CATCH_UP
  frames (60 ms), which covers an ordinary late timer wake-up on a busy loop without a gap; the rest of the
  lateness is kept as the talkspurt's `slip`: the speech goes on at the real-time pace, late by it, instead of
  piling up at the receiver. A receiver's jitter buffer therefore grows by at most 60 ms in a stall, what the
  server counts as played (samples read from the session) is at most 60 ms ahead of what was sent, and a
  barge-in finds at most that much speech queued downstream.
- The slip is given back at the talkspurt's end: the first silent frame after it jumps to the wall clock's slot
  like any late silent frame. So speech plays late by at most the stalls it lived through, and the silence after
  it does not keep the debt. That frame also waits out what the talkspurt caught up back to back (at most the
  60 ms), its timestamp jumping as far, so a receiver that queued those frames plays them out in the pause.

The jump is made on a silent frame only (a talkspurt that would start while the clock is behind first gets one
silent frame on the wall clock's slot, 20 ms): aiortc's Opus encoder cuts its packets 6.5 ms (look-ahead) off the
frames and stamps each by the frame it starts in, so the gap lands inside the frame that carries the jump (a jump
on frame k showed between packets k and k+1), and that frame must be silence, not a word.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction

import av
import numpy as np

# Frames a late talkspurt catches up back to back (60 ms at 20 ms frames). A busy event loop wakes timers late by
# tens of milliseconds routinely (the soak's loop-lag p50 was 77-93 ms at load 11-18); a receiver's jitter buffer
# covers that much (aiortc's holds 4 frames, a browser's adapts to tens of ms), so catching it up avoids a gap
# inside a word. A longer stall has already emptied any low-latency jitter buffer, so sending its frames faster
# than real time would not save that gap, only add its length to every later frame's delay.
MAX_CATCH_UP = 3

SLOT_EPSILON = 1e-6  # seconds: a frame late by exactly whole slots counts them all despite float rounding

Read = Callable[[int], np.ndarray | None]


class FrameClock:
    """Paces one track's frames on the wall clock (see the module docstring for the rule after a stall).

    `next_frame(read)` waits until the next frame is due, calls `read(frame)` for its samples (None: nothing to
    play, silence) unless the frame has to be silent, and returns (pts, samples or None). `now` and `sleep` are the
    clock's time source (tests pass fake ones)."""

    def __init__(
        self,
        rate: int,
        frame: int,
        catch_up: int = MAX_CATCH_UP,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or frame <= 0 or catch_up < 1:
            raise ValueError(f"FrameClock needs rate > 0, frame > 0, catch_up >= 1; got {rate}, {frame}, {catch_up}")
        self.rate, self.frame = rate, frame
        self._frame_s = frame / rate
        self._catch_up_s = catch_up * self._frame_s
        self._now, self._sleep = now, sleep
        self._start: float | None = None  # wall time of pts 0: the slot of pts p is _start + p / rate
        self._pts = 0  # pts of the next frame
        self._talking = False  # the last frame carried speech
        self.slip = 0.0  # seconds the current talkspurt runs behind the wall clock (0 in silence)
        self.frames = 0  # frames handed out
        self.skipped = 0  # silent frames left out after a late wake-up (the timestamps jump over them)
        self.slipped = 0.0  # seconds talkspurts fell behind the wall clock, in total
        self._caught = 0.0  # the longest lateness this talkspurt caught up back to back (<= the catch-up)

    def _late(self, now: float) -> float:
        """How late the next frame is at `now` against the wall clock's slot (negative: early)."""
        assert self._start is not None
        return now - (self._start + self._pts / self.rate)

    async def next_frame(self, read: Read) -> tuple[int, np.ndarray | None]:
        """Wait until the next frame is due; its pts (in samples) and `read`'s samples (None: silence)."""
        now = self._now()
        if self._start is None:
            self._start = now
        else:
            wait = self.slip - self._late(now)
            if wait > 0:
                await self._sleep(wait)
                now = self._now()
        behind = self._late(now)
        slots = max(0, int((behind + SLOT_EPSILON) // self._frame_s))  # whole frame slots passed since the due one
        pcm = None if slots and not self._talking else read(self.frame)  # speech must not start across a jump
        if pcm is None:
            await self._jump(slots)
        else:
            late = behind - self.slip  # against the talkspurt's own (slipped) schedule
            if late > self._catch_up_s:
                self.slip += late - self._catch_up_s
                self.slipped += late - self._catch_up_s
            if late > 0:
                self._caught = max(self._caught, min(late, self._catch_up_s))
        self._talking = pcm is not None
        pts = self._pts
        self._pts += self.frame
        self.frames += 1
        return pts, pcm

    async def _jump(self, slots: int) -> None:
        """A silent frame: its timestamp jumps over the `slots` it is late by. At a talkspurt's end it also jumps
        over, and waits out, the longest lateness the talkspurt caught up back to back: a receiver that queued those
        frames plays them out in this pause instead of keeping them as delay (the catch-up's 60 ms at most)."""
        hold = int((self._caught + SLOT_EPSILON) // self._frame_s) if self._talking else 0
        self._caught = self.slip = 0.0
        self._pts += (slots + hold) * self.frame
        self.skipped += slots + hold
        if hold:
            wait = -self._late(self._now())
            if wait > 0:
                await self._sleep(wait)


def mono_frame(pcm: np.ndarray, rate: int, pts: int) -> av.AudioFrame:
    """int16 mono samples as an av.AudioFrame stamped `pts` (in samples)."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame
