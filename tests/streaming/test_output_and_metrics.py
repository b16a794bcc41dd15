from __future__ import annotations

import numpy as np

from omni.streaming.engine import AudioChunk
from omni.streaming.metrics import ServerMetrics, TurnMetrics
from omni.streaming.output import OutputAudio, PlayLog


async def test_output_reads_frames_and_tracks_what_was_played() -> None:
    started: list[str] = []
    played: list[str] = []
    out = OutputAudio(8, started.append, played.append)
    assert out.read(960) is None
    await out.put("r1", AudioChunk(np.full(1500, 7, np.int16), "Hello"))
    await out.put("r1", AudioChunk(np.full(1000, 9, np.int16), " world"))
    await out.put("r1", None)
    a = out.read(960)
    assert a is not None and (a == 7).all() and started == ["r1"]
    b = out.read(960)
    assert b is not None and (b[:540] == 7).all() and (b[540:] == 9).all()
    assert out.logs["r1"].played_text() == "Hello"
    c = out.read(960)
    assert c is not None and (c[:580] == 9).all() and (c[580:] == 0).all()
    assert played == ["r1"] and out.logs["r1"].played_text() == "Hello world"
    assert out.read(960) is None


async def test_flush_drops_unplayed_audio() -> None:
    out = OutputAudio(8)
    await out.put("r1", AudioChunk(np.ones(960, np.int16), "one"))
    await out.put("r1", AudioChunk(np.ones(9600, np.int16), " two three four"))
    await out.put("r1", AudioChunk(np.ones(960, np.int16), " five"))
    out.read(960)
    out.read(960 * 5)  # half of the second chunk
    assert out.flush() == 9600 - 960 * 5 + 960
    assert out.read(960) is None and not out.busy
    assert out.logs["r1"].played_text() == "one two"  # half of " two three four" by words


def test_play_log_text_until() -> None:
    log = PlayLog("r", spans=[(0, 100, "Hi"), (100, 400, " there my friend")])
    assert log.text_until(0) == ""
    assert log.text_until(100) == "Hi"
    assert log.text_until(400) == "Hi there my friend"


def test_prometheus_text() -> None:
    m = ServerMetrics()
    m.inc("sessions_total", "sessions started")
    m.observe_turn(
        TurnMetrics(
            turn=1,
            end_of_speech=1.0,
            response_start=1.5,
            first_text=1.6,
            first_audio=1.7,
            audio_seconds=2.0,
            compute_seconds=0.5,
            barge_in_seconds=0.12,
            interrupted=True,
        )
    )
    text = m.render()
    assert "# TYPE omni_sessions_total counter\nomni_sessions_total 1\n" in text
    assert 'omni_end_of_speech_to_first_audio_seconds_bucket{le="0.8"} 1' in text
    assert 'omni_end_of_speech_to_first_audio_seconds_bucket{le="0.5"} 0' in text
    assert "omni_barge_in_seconds_count 1" in text
    assert "omni_barge_ins_total 1" in text
    assert "omni_real_time_factor_sum 0.25" in text


def test_empty_engine_audio_chunk_resamples_to_nothing() -> None:
    from omni.model.pcm import StreamingResampler
    from omni.streaming.session import _resample_out

    resampler = StreamingResampler(24000, 48000)
    assert _resample_out(resampler, np.zeros(0, np.float32)).size == 0
    out = _resample_out(resampler, np.full(2400, 0.5, np.float32))  # the resampler still works after it
    tail = _resample_out(resampler, None)
    assert out.dtype == np.int16 and 4000 <= out.size + tail.size <= 4900
