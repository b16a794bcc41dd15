"""FrameClock (omni/app/frame_clock.py) on fake time: pacing, and what a stall does to silence and to speech; the
assistant's track keeps the played-samples accounting exact around a stall."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from omni.app.frame_clock import MAX_CATCH_UP, FrameClock
from omni.app.rtc_media import AssistantAudioTrack
from omni.streaming.engine import AudioChunk
from omni.streaming.metrics import ServerMetrics
from omni.streaming.output import OutputAudio

RATE, FRAME = 48000, 960
FRAME_S = FRAME / RATE


class FakeTime:
    """A clock that moves only when the code under test sleeps or the test stalls it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds

    def stall(self, seconds: float) -> None:
        self.t += seconds


class Speech:
    """A frame source: `n` speech frames (each filled with its index + 1), then silence (None)."""

    def __init__(self, n: int = 0) -> None:
        self.frames: deque[np.ndarray] = deque(np.full(FRAME, i + 1, np.int16) for i in range(n))
        self.reads = 0

    def read(self, n: int) -> np.ndarray | None:
        assert n == FRAME
        self.reads += 1
        return self.frames.popleft() if self.frames else None


def make_clock(ft: FakeTime) -> FrameClock:
    return FrameClock(RATE, FRAME, now=ft.now, sleep=ft.sleep)


def slot_of(clock_start: float, ft: FakeTime) -> int:
    """The wall clock's current frame slot, as a pts."""
    return int((ft.t - clock_start) / FRAME_S + 1e-9) * FRAME


async def test_frames_are_paced_one_per_frame_time_with_contiguous_timestamps() -> None:
    ft, src = FakeTime(), Speech(5)
    clock = make_clock(ft)
    out = [await clock.next_frame(src.read) for _ in range(10)]
    assert [pts for pts, _ in out] == [i * FRAME for i in range(10)]
    assert ft.slept == pytest.approx([FRAME_S] * 9)
    assert [int(p[0]) for _, p in out[:5] if p is not None] == [1, 2, 3, 4, 5] and out[5][1] is None
    assert clock.skipped == 0 and clock.slipped == 0.0 and clock.frames == 10


async def test_after_a_stall_in_silence_the_late_frames_are_skipped_not_burst() -> None:
    """The bug: a 500 ms stall made the next 25 frames go at once with contiguous timestamps (a receiver then
    plays everything 500 ms late for the rest of the call). Now the timestamps jump to the wall clock."""
    ft, src = FakeTime(), Speech(0)
    clock = make_clock(ft)
    start = ft.t
    for _ in range(5):
        await clock.next_frame(src.read)
    ft.stall(0.5)
    pts, pcm = await clock.next_frame(src.read)
    assert pcm is None
    assert pts == slot_of(start, ft)  # back on the wall clock at once
    assert clock.skipped == pts // FRAME - 5 >= 24
    sleeps_before = len(ft.slept)
    later = [await clock.next_frame(src.read) for _ in range(5)]
    assert len(ft.slept) - sleeps_before == 5  # every next frame waits its turn: no burst
    assert [p for p, _ in later] == [pts + (i + 1) * FRAME for i in range(5)]


async def test_a_stall_mid_speech_keeps_every_frame_contiguous_and_gives_the_lag_back_in_the_silence() -> None:
    ft, src = FakeTime(), Speech(60)
    clock = make_clock(ft)
    start = ft.t
    got = [await clock.next_frame(src.read) for _ in range(10)]
    ft.stall(0.5)
    t_after = ft.t
    while src.frames:
        got.append(await clock.next_frame(src.read))
        if ft.t == t_after:
            burst = len(got) - 10  # frames handed out before any wait after the stall
    speech = [(p, x) for p, x in got if x is not None]
    assert [int(x[0]) for _, x in speech] == list(range(1, 61))  # nothing dropped, in order
    assert [p for p, _ in speech] == [i * FRAME for i in range(60)]  # no gap inside the speech
    assert burst <= MAX_CATCH_UP + 1  # the late frame and at most MAX_CATCH_UP more at once, not the stall's 25
    assert clock.slipped == pytest.approx(0.5 - FRAME_S - MAX_CATCH_UP * FRAME_S)  # stalled 20 ms before a due frame
    assert clock.slip == pytest.approx(clock.slipped)  # the talkspurt is still running late
    pts, pcm = await clock.next_frame(src.read)  # the first silence after the speech
    assert pcm is None and clock.slip == 0.0
    assert pts == slot_of(start, ft)  # on the wall clock again: the lag is not kept
    assert ft.slept[-1] == pytest.approx(MAX_CATCH_UP * FRAME_S)  # and the caught-up frames get played out
    assert clock.skipped == pts // FRAME - 60 >= 21


async def test_speech_that_would_start_behind_the_clock_starts_after_one_silent_frame_on_time() -> None:
    """The timestamp jump falls on a silent frame (Opus look-ahead carries a frame's end into the next packet)."""
    ft, src = FakeTime(), Speech(0)
    clock = make_clock(ft)
    start = ft.t
    await clock.next_frame(src.read)
    ft.stall(0.3)
    src.frames.extend(np.full(FRAME, 7, np.int16) for _ in range(3))  # speech queued during the stall
    reads = src.reads
    pts, pcm = await clock.next_frame(src.read)
    assert pcm is None and src.reads == reads  # not read: the speech waits one frame
    assert pts == slot_of(start, ft)
    nxt = [await clock.next_frame(src.read) for _ in range(3)]
    assert [p for p, _ in nxt] == [pts + FRAME, pts + 2 * FRAME, pts + 3 * FRAME]
    assert all(x is not None and int(x[0]) == 7 for _, x in nxt)
    assert clock.slipped == 0.0


async def test_a_late_wake_up_within_the_catch_up_is_caught_up_without_slip() -> None:
    ft, src = FakeTime(), Speech(20)
    clock = make_clock(ft)
    for _ in range(5):
        await clock.next_frame(src.read)
    ft.stall(0.045)  # a timer 45 ms late: 2 frames behind, inside the catch-up
    got = [await clock.next_frame(src.read) for _ in range(10)]
    assert [p for p, _ in got] == [(5 + i) * FRAME for i in range(10)]
    assert clock.slipped == 0.0 and clock.skipped == 0


def test_bad_clock_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="catch_up >= 1"):
        FrameClock(RATE, FRAME, catch_up=0)
    with pytest.raises(ValueError, match="rate > 0"):
        FrameClock(0, FRAME)


class OutputOnly:
    """The part of a Session the track reads: its output buffer."""

    def __init__(self, output: OutputAudio) -> None:
        self.output = output

    def read_output(self, n: int) -> np.ndarray | None:
        return self.output.read(n)


async def test_the_track_counts_as_played_only_what_it_sent_around_a_stall() -> None:
    """What the server counts as heard (PlayLog.played: truncation at barge-in) is what the track handed out: after
    a stall mid-reply at most MAX_CATCH_UP frames more than real time, not the stall's worth; a barge-in (flush)
    keeps the count exact; the clock's counters reach /metrics."""
    ft, metrics = FakeTime(), ServerMetrics()
    output = OutputAudio()
    await output.put("resp_1", AudioChunk(np.full(RATE * 2, 1000, np.int16), "one two three four"))
    track = AssistantAudioTrack(OutputOnly(output), metrics)  # type: ignore[arg-type]
    track.clock = make_clock(ft)
    sent = 0
    for _ in range(10):
        frame = await track.recv()
        sent += int(np.count_nonzero(frame.to_ndarray()))
    ft.stall(0.5)
    t_after, at_once = ft.t, 0
    while ft.t == t_after:
        frame = await track.recv()
        sent += int(np.count_nonzero(frame.to_ndarray()))
        at_once += ft.t == t_after
    assert at_once <= MAX_CATCH_UP + 1  # the late frame and MAX_CATCH_UP more, not the stall's 25
    log = output.logs["resp_1"]
    assert log.played == sent == (10 + at_once + 1) * FRAME  # + the frame that waited its turn
    dropped = output.flush()  # barge-in
    assert log.played + dropped == RATE * 2
    assert log.played_text() == log.text_until(sent)
    for _ in range(3):
        frame = await track.recv()
        assert not frame.to_ndarray().any()
    counters = metrics.counters
    assert counters["output_speech_slip_seconds_total"][1] == pytest.approx(0.5 - (1 + MAX_CATCH_UP) * FRAME_S)
    assert counters["output_frames_skipped_total"][1] >= 21
    track.stop()
