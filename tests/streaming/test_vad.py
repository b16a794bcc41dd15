from __future__ import annotations

import numpy as np

from omni.model.pcm import resample, to_int16
from omni.streaming.audio_in import AudioInStage, EndTurn, EngineFeed, PrepareTurn, TurnAudio
from omni.streaming.engine import TranscriptDelta
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.frames import AudioFrame, SpeechPaused, SpeechStarted, SpeechStopped
from omni.streaming.vad import CHUNK, CHUNK_SECONDS, SileroVad, TurnConfig, TurnDetector


def run_detector(probs: list[float], cfg: TurnConfig) -> list[SpeechStarted | SpeechPaused | SpeechStopped]:
    d = TurnDetector(cfg)
    events = [d.step(p, i * CHUNK_SECONDS, CHUNK_SECONDS) for i, p in enumerate(probs)]
    return [e for e in events if e is not None]


def test_short_bursts_are_not_speech() -> None:
    cfg = TurnConfig(min_speech_ms=100, silence_ms=300, pause_ms=0)
    click = [0.0] * 5 + [0.9, 0.9] + [0.0] * 20  # 64 ms: a click
    assert run_detector(click, cfg) == []
    speech = [0.0] * 5 + [0.9] * 10 + [0.0] * 20
    events = run_detector(speech, cfg)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert abs(events[0].timestamp - 5 * CHUNK_SECONDS) < 1e-9  # the onset, not the confirmation time
    assert abs(events[1].timestamp - 15 * CHUNK_SECONDS) < 1e-9  # end of the last voiced chunk


def test_turn_ends_only_after_the_configured_silence() -> None:
    pause = [0.9] * 10 + [0.0] * 8 + [0.9] * 10 + [0.0] * 20  # a 256 ms pause inside the turn
    assert [type(e) for e in run_detector(pause, TurnConfig(silence_ms=400, pause_ms=0))] == [SpeechStarted,
                                                                                              SpeechStopped]
    assert [type(e) for e in run_detector(pause, TurnConfig(silence_ms=200, pause_ms=0))] == [SpeechStarted,
                                                                                              SpeechStopped] * 2


def test_a_pause_is_said_once_per_silence_before_the_turn_ends() -> None:
    # 256 ms pause inside the turn, then 640 ms of silence: a pause each time, one stop at the end
    probs = [0.9] * 10 + [0.0] * 8 + [0.9] * 10 + [0.0] * 20
    events = run_detector(probs, TurnConfig(silence_ms=400, pause_ms=200))
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechPaused, SpeechStopped]
    first_pause, second_pause, stop = events[1].timestamp, events[2].timestamp, events[3].timestamp
    assert abs(first_pause - 10 * CHUNK_SECONDS) < 1e-9  # timestamps: end of the voiced audio, as for a stop
    assert abs(second_pause - 28 * CHUNK_SECONDS) < 1e-9 and stop == second_pause
    with np.testing.assert_raises(ValueError):
        TurnConfig(pause_ms=-1).validate()
    # a pause as long as the silence never comes first: the turn just ends
    assert SpeechPaused not in [type(e) for e in run_detector(probs, TurnConfig(silence_ms=200, pause_ms=200))]


class _PreparingEngine:
    """Records the order of engine calls (a ToneEngine session plus `prepare_turn`)."""

    def __init__(self) -> None:
        self.inner = ToneEngine().open_session()
        self.calls: list[str] = []

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[object]:
        self.calls.append("audio")
        return self.inner.push_audio(pcm, timestamp)

    def prepare_turn(self) -> list[object]:
        self.calls.append("prepare")
        return []

    def end_turn(self) -> list[object]:
        self.calls.append("end")
        return self.inner.end_turn()


def test_silence_after_a_pause_reaches_the_engine_only_if_speech_resumes(vad: SileroVad,
                                                                           speech16k: np.ndarray) -> None:
    stage = AudioInStage(vad, 16000)
    st = stage.init_state(TurnConfig(silence_ms=600, pause_ms=200))
    gap = np.zeros(8000, np.int16)  # 0.5 s: a pause, not the end of the turn
    pcm = np.concatenate([speech16k, gap, speech16k, np.zeros(16000, np.int16)])
    frames = [AudioFrame(pcm[i : i + 320], 16000, i / 16000) for i in range(0, len(pcm) - 319, 320)]
    out = stage.process(st, frames)
    kinds = [type(e) for e in out if not isinstance(e, TurnAudio)]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechStopped and SpeechPaused in kinds
    audio = [e for e in out if isinstance(e, TurnAudio)]
    # the audio given to the engine is continuous from the onset's prefix up to the last pause: the pause
    # between the two utterances (speech resumed) is in it, the silence after the final pause is not
    starts = [a.timestamp for a in audio]
    ends = [a.timestamp + len(a.pcm) / 16000 for a in audio]
    assert all(abs(e - s) < 1e-6 for e, s in zip(ends[:-1], starts[1:], strict=True))
    last_pause = [e for e in out if isinstance(e, SpeechPaused)][-1]
    assert abs(ends[-1] - last_pause.timestamp - 0.2) < 0.05
    # and an engine with prepare_turn hears: audio, prepare at each pause, more audio after a resumed pause
    engine, feed = _PreparingEngine(), EngineFeed()
    for ev in out:
        if isinstance(ev, TurnAudio):
            feed.run(engine, [ev])  # type: ignore[arg-type]
        elif isinstance(ev, SpeechPaused):
            feed.run(engine, [PrepareTurn()])  # type: ignore[arg-type]
        elif isinstance(ev, SpeechStopped):
            feed.run(engine, [EndTurn()])  # type: ignore[arg-type]
    calls = [c for i, c in enumerate(engine.calls) if i == 0 or c != engine.calls[i - 1]]
    assert calls[0] == "audio" and calls[-2:] == ["prepare", "end"] and calls.count("end") == 1
    assert ["prepare", "audio"] == calls[calls.index("prepare") : calls.index("prepare") + 2]  # speech resumed
    feed.run(ToneEngine().open_session(), [PrepareTurn()])  # engines without prepare_turn: nothing happens


def test_packaged_silero_hears_speech_not_silence(vad: SileroVad, speech16k: np.ndarray) -> None:
    x = speech16k.astype(np.float32) / 32768.0
    st = vad.init_state()
    probs = [vad.step(st, x[i : i + CHUNK]) for i in range(0, len(x) - CHUNK + 1, CHUNK)]
    st = vad.init_state()
    quiet = [vad.step(st, np.zeros(CHUNK, np.float32)) for _ in range(30)]
    assert max(probs) > 0.9 and np.mean(np.array(probs) > 0.5) > 0.4
    assert max(quiet) < 0.1


def test_audio_stage_frames_in_turn_events_out(vad: SileroVad, speech16k: np.ndarray) -> None:
    """48 kHz stereo frames (as WebRTC delivers them) -> one turn, its audio given to the engine."""
    stage = AudioInStage(vad, 16000)
    st = stage.init_state(TurnConfig(silence_ms=700))  # the utterance pauses ~0.4 s between its sentences
    engine = ToneEngine().open_session()
    feed = EngineFeed()
    padded = np.concatenate([np.zeros(8000, np.int16), speech16k, np.zeros(16000, np.int16)])
    pcm48 = to_int16(resample(padded, 16000, 48000))
    stereo = np.repeat(pcm48, 2)  # packed L R L R
    out: list[object] = []
    for k, i in enumerate(range(0, len(pcm48) - 960 + 1, 960)):
        frame = AudioFrame(stereo[2 * i : 2 * (i + 960)].reshape(1, -1), 48000, k * 0.02, channels=2)
        for ev in stage.process(st, [frame]):
            out.append(ev)
            if isinstance(ev, TurnAudio):
                out += feed.run(engine, [ev])
            elif isinstance(ev, SpeechStopped):
                out += feed.run(engine, [EndTurn()])
    turn = [e for e in out if isinstance(e, SpeechStarted | SpeechStopped)]
    assert [type(e) for e in turn] == [SpeechStarted, SpeechStopped]
    assert 0.3 < turn[0].timestamp < 0.8  # the speech begins at 0.5 s
    speech_s = len(speech16k) / 16000
    assert abs(turn[1].timestamp - (0.5 + speech_s)) < 0.4
    audio = [e for e in out if isinstance(e, TurnAudio)]
    pos = [id(e) for e in out]
    assert pos.index(id(turn[0])) < pos.index(id(audio[0])) and pos.index(id(audio[-1])) < pos.index(id(turn[1]))
    assert abs(audio[0].timestamp - (turn[0].timestamp - 0.3)) < 0.05  # prefix_ms of audio before the onset
    finals = [e for e in out if isinstance(e, TranscriptDelta) and e.final]
    assert len(finals) == 1
    heard = float(finals[0].text.split()[2])  # "(spoke for N s)": what reached the engine
    assert speech_s - 0.2 < heard < speech_s + 0.3 + 0.7  # prefix padding + the silence that ended the turn


def test_audio_is_held_back_while_a_reply_is_live(vad: SileroVad, speech16k: np.ndarray) -> None:
    stage = AudioInStage(vad, 16000)
    st = stage.init_state(TurnConfig(silence_ms=300))
    engine = ToneEngine().open_session()
    feed = EngineFeed(hold=True)
    frames = [AudioFrame(speech16k[i : i + 320], 16000, i / 16000) for i in range(0, 16000, 320)]
    out = stage.process(st, frames)
    assert any(isinstance(e, SpeechStarted) for e in out)
    audio = [e for e in out if isinstance(e, TurnAudio)]
    assert audio and all(feed.route(a, 16000) is None for a in audio)
    assert feed.release() == [] and feed.held  # still held while the reply is live
    feed.hold = False
    released = feed.release()
    assert len(released) == 1 and not feed.held
    assert isinstance(released[0], TurnAudio) and released[0].timestamp == audio[0].timestamp
    feed.run(engine, released)
    assert engine.heard_samples == sum(len(a.pcm) for a in audio) > 8000


def test_held_audio_is_bounded(vad: SileroVad) -> None:
    feed = EngineFeed(hold=True, max_hold_seconds=1.0)
    pieces = [TurnAudio(np.full(1600, i, np.float32), i * 0.1) for i in range(30)]  # 3 s in 0.1 s pieces
    for p in pieces:
        feed.route(p, 16000)
    feed.hold = False
    (kept,) = feed.release()
    assert isinstance(kept, TurnAudio)
    assert len(kept.pcm) == 10 * 1600 and kept.timestamp == pieces[20].timestamp  # the newest second
