"""The semantic end of turn with the embedded engine: at the pause the engine says how likely the spoken words
are a finished message (TurnEndLikely, from prepare_turn), and through the runtime a finished question is
answered after a shorter silence than with the semantic end off. Compared in media time (the audio the turn
detector had heard when it ended the turn), not in wall-clock time."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.rtc_client import WAIT
from benchmarks.spoken import spoken
from omni.model.embedded.tts import EspeakVoice
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import load_lm
from omni.model.pcm import to_int16
from omni.streaming.engine import TurnEndLikely
from omni.streaming.engines.embedded import EmbeddedEngine
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import DEFAULT_SEMANTIC_EOT, SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness

# A question Whisper hears right at the pause in this voice (and three other espeak-ng voices and rates, which
# all scored it 0.63). "What is the capital of France?" is heard there as "What is the capital on France?", which
# the LM scores 0.40 (the written question: 0.92, tests/model/test_end_of_turn.py).
QUESTION = "Why is the sky blue?"
VOICE = EspeakVoice("en-us", rate=150)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine(lm=load_lm(), sampling=SamplingConfig(repetition_penalty=1.1, max_new_tokens=16))


def prepared(engine: EmbeddedEngine, text: str) -> float:
    """The probability the engine gives at a pause after `text`, spoken."""
    session = engine.open_session()
    audio = spoken(text, VOICE)
    for start in range(0, audio.size, 320):
        session.push_audio(audio[start : start + 320], start / 16000)
    events = session.prepare_turn()
    session.close()
    assert len(events) == 1 and isinstance(events[0], TurnEndLikely), events
    return events[0].probability


def test_the_engine_scores_a_spoken_question_finished_and_its_prefix_not(engine: EmbeddedEngine) -> None:
    finished, unfinished = prepared(engine, QUESTION), prepared(engine, "What is the capital of")
    assert unfinished < DEFAULT_SEMANTIC_EOT <= finished, (finished, unfinished)


async def silence_waited(engine: EmbeddedEngine, worker: DeviceWorker, vad: SileroVad, semantic_eot: float) -> float:
    """Seconds of silence after the spoken question that the runtime heard before it ended the turn (and sent
    response.created). The question and 500 ms of silence (past the 200 ms pause) are fed, then the test waits
    until the engine has answered the pause, then feeds 1.2 s more silence, all as fast as the runtime takes it:
    the same audio at the same media times in both runs, whatever the machine's speed."""
    cfg = SessionConfig(turn=TurnConfig(silence_ms=700, pause_ms=200, semantic_eot=semantic_eot), speech=False)
    h = Harness(engine, worker, vad, cfg)
    await h.start()  # (the fake track plays the reply out: the turn is finished then)
    try:
        speech = to_int16(spoken(QUESTION, VOICE))
        await h.feed(speech, realtime=False)  # `spoken` pads it with 300 ms of silence on each side
        # past the pause whatever the VAD's hang-over, short of the silence
        await h.silence(0.2, realtime=False, continuous=True)
        detector = h.session._audio_state.detector
        for _ in range(int(WAIT / 0.05)):  # the pause reached the engine (Whisper, prefill) and came back
            if detector.end_p is not None:
                break
            await asyncio.sleep(0.05)
        assert detector.end_p is not None, "the engine never answered the pause"
        # media time goes on from the question's: on a loaded machine the engine's answer can take longer than
        # the audio fed so far, and a stream stamped by the clock would then show a gap past the silence
        await h.silence(1.2, realtime=False, continuous=True)
        stopped = await h.wait_for("input_audio_buffer.speech_stopped")
        await h.wait_for("response.created")
        await h.wait_for("omni.metrics")  # the turn is in turn_history then
    finally:
        await h.close()
    m = h.session.turn_history[0]
    assert m.end_of_speech is not None and m.turn_end_heard is not None
    assert stopped["audio_end_ms"] == int(m.end_of_speech * 1000)
    assert m.semantic_end == (semantic_eot > 0)
    assert m.end_probability is not None and m.end_probability >= DEFAULT_SEMANTIC_EOT  # reported, on or off
    return m.turn_end_heard - m.end_of_speech


async def test_a_finished_question_is_answered_after_a_shorter_silence(
    engine: EmbeddedEngine, worker: DeviceWorker, vad: SileroVad
) -> None:
    on = await silence_waited(engine, worker, vad, DEFAULT_SEMANTIC_EOT)
    off = await silence_waited(engine, worker, vad, 0.0)
    assert off >= 0.7  # the full silence
    assert 0.2 <= on < 0.7  # ended at the first chunk after the engine's answer: at most ~500 ms had been fed
