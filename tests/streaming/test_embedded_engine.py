"""The embedded engine end to end on spoken input: recognition, the SmolLM2 reply, speech phrase by phrase,
barge-in. The LM is loaded once per test run; replies are capped at 48 tokens to keep the suite quick."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from model.loaders import LoadedLM, load_lm
from model.sampling import SamplingConfig
from model.speech.asr import RecognizerConfig, StreamingRecognizer
from model.speech.resample import resample
from model.speech.tts import TTSError, Voice
from model.speech.wer import word_errors
from streaming.engine import AudioChunk, Engine, EngineEvent, EngineSession, ReplyDone, TextDelta, TranscriptDelta
from streaming.engines.embedded import REALTIME_VOICES, EmbeddedEngine, EmbeddedSession, as_sentence
from tests.model.speech.spoken import spoken

# espeak-ng's en-us voice at 150 words per minute: the recogniser gets this phrasing right on a fresh session
# in every run we made (see tests/model/speech/test_asr.py); slower rates and the +m3 variant lose "capital".
FRANCE = "What is the capital of France?"
FRANCE_VOICE = Voice("en-us", rate=150)


@pytest.fixture(scope="session")
def smollm() -> LoadedLM:
    return load_lm()


@pytest.fixture(scope="module")
def engine(smollm: LoadedLM) -> EmbeddedEngine:
    sampling = SamplingConfig(repetition_penalty=1.1, max_new_tokens=48)
    return EmbeddedEngine(lm=smollm, sampling=sampling, torch_threads=None)  # the suite's thread setting stays


def say(session: EngineSession, audio: np.ndarray, chunk: int = 320) -> list[EngineEvent]:
    """Push 16 kHz audio in 20 ms frames, as the runtime does, then end the turn."""
    events: list[EngineEvent] = []
    for start in range(0, audio.size, chunk):
        events += session.push_audio(audio[start : start + chunk], start / 16000)
    return events + session.end_turn()


@pytest.fixture(scope="module")
def france_turn(engine: EmbeddedEngine) -> tuple[EmbeddedSession, list[EngineEvent], list[EngineEvent]]:
    session = engine.open_session()
    heard = say(session, spoken(FRANCE, FRANCE_VOICE))
    return session, heard, list(session.respond())


def test_implements_the_engine_interface(engine: EmbeddedEngine) -> None:
    assert isinstance(engine, Engine)
    assert (engine.name, engine.input_sample_rate, engine.output_sample_rate) == ("embedded", 16000, 24000)
    session = engine.open_session(instructions="Answer in French.", voice="en-us+f3")
    assert isinstance(session, EngineSession)
    assert session.chat.messages[0] == {"role": "system", "content": "Answer in French."}
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.push_audio(np.zeros(320, np.float32), 0.0)


def test_transcripts_partial_then_final(france_turn: tuple) -> None:
    _, heard, _ = france_turn
    assert all(isinstance(e, TranscriptDelta) for e in heard)
    partials, final = heard[:-1], heard[-1]
    assert partials and not any(p.final for p in partials)
    assert final.final and "capital" in final.text and "france" in final.text


def test_reply_mentions_paris_and_is_spoken_while_generated(france_turn: tuple) -> None:
    _, _, events = france_turn
    assert isinstance(events[-1], ReplyDone) and not any(isinstance(e, ReplyDone) for e in events[:-1])
    done = events[-1]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert "paris" in text.lower()
    assert done.text == text
    assert "".join(c.text for c in chunks) == text  # every piece of the reply is spoken, in order, once
    assert all(c.pcm.dtype == np.float32 and c.pcm.ndim == 1 and np.abs(c.pcm).max() <= 1 for c in chunks)
    assert len(chunks) >= 2
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    last_text = max(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert first_audio < last_text  # speech started before the text was complete
    assert done.stats["new_tokens"] > 0 and done.stats["first_audio_s"] > 0


def test_spoken_reply_is_recognised_back(france_turn: tuple) -> None:
    """The reply's 24 kHz speech, back through the recogniser with the general en-us LM (a reply is free text,
    outside the conversational LM's domain). Measured WER on three replies: 0.56-0.64; espeak-ng's speech is
    hard for the en-us acoustic model. Against another sentence the same audio scores ~1.0."""
    _, _, events = france_turn
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    audio = resample(pcm, 24000, 16000)
    assert abs(audio.size / 16000 - events[-1].stats["speech_s"]) < 0.1
    heard = StreamingRecognizer(RecognizerConfig()).recognize(audio, chunk=320)
    errors = word_errors(events[-1].text, heard)
    assert errors.reference_words >= 8
    assert errors.rate <= 0.75
    other = "Whales are large mammals that live in every ocean and sing songs to one another over long distances."
    assert word_errors(other, heard).rate >= 0.85


def test_transcript_is_given_to_the_lm_as_a_sentence() -> None:
    assert as_sentence("what is the capital of france") == "What is the capital of france?"
    assert as_sentence("i think i'm tired") == "I think I'm tired."
    assert as_sentence("") == ""


def test_barge_in_keeps_only_what_was_played(engine: EmbeddedEngine) -> None:
    session = engine.open_session()
    say(session, spoken("Tell me about the moon."))
    reply: Iterator[EngineEvent] = session.respond()
    played = ""
    for event in reply:
        if isinstance(event, AudioChunk):
            played = event.text
            break
    reply.close()  # the runtime abandons the reply ...
    session.interrupt(played)  # ... and says what the user heard
    assert played and session.chat.messages[-1] == {"role": "assistant", "content": played}
    heard = say(session, spoken(FRANCE, FRANCE_VOICE))
    events = list(session.respond())
    assert "france" in heard[-1].text
    assert isinstance(events[-1], ReplyDone) and events[-1].text
    roles = [m["role"] for m in session.chat.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert session.chat.messages[2]["content"] == played


def test_nothing_heard_gives_an_empty_reply(engine: EmbeddedEngine) -> None:
    session = engine.open_session()
    assert session.end_turn() == [TranscriptDelta("", final=True)]
    events = list(session.respond())
    assert len(events) == 1 and isinstance(events[0], ReplyDone) and events[0].text == ""
    assert len(session.chat.messages) == 1  # only the system prompt: nothing was answered


def test_voices(engine: EmbeddedEngine) -> None:
    with pytest.raises(TTSError, match="no-such-voice"):
        engine.open_session(voice="no-such-voice")
    for name, espeak in REALTIME_VOICES.items():  # OpenAI Realtime voice names map to espeak-ng variants
        assert engine.open_session(voice=name).synth.voice.name == espeak
