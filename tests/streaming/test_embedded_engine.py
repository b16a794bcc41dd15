"""The embedded engine end to end on spoken input: Whisper recognition, the SmolLM2 reply, speech phrase by
phrase (Piper joe), barge-in. The LM is loaded once per test run; replies are capped at 48 tokens to keep the
suite quick."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import pytest

from benchmarks.spoken import spoken
from omni.model.embedded.piper import PiperSynthesizer
from omni.model.embedded.tts import EspeakVoice, Synthesizer
from omni.model.embedded.voices import VOICES, VoiceError
from omni.model.embedded.wer import word_errors
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.model.pcm import StreamingResampler, resample
from omni.streaming.engine import (
    AudioChunk,
    Engine,
    EngineEvent,
    EngineSession,
    ReplyDone,
    ResponseOptions,
    TextDelta,
    TranscriptDelta,
    TurnEndLikely,
)
from omni.streaming.engines.embedded import REALTIME_VOICES, EmbeddedEngine, EmbeddedSession, as_sentence, voice_key
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.streaming.test_text_turns import typed_turn

# espeak-ng's en-us voice at 150 words per minute: the phrasing the pocketsphinx recogniser got right; Whisper
# hears it and the other voices of tests/model/embedded/test_whisper.py.
FRANCE = "What is the capital of France?"
FRANCE_VOICE = EspeakVoice("en-us", rate=150)


@pytest.fixture(scope="session")
def smollm() -> LoadedLM:
    return load_lm()


@pytest.fixture(scope="module")
def engine(smollm: LoadedLM) -> EmbeddedEngine:
    sampling = SamplingConfig(repetition_penalty=1.1, max_new_tokens=48)
    return EmbeddedEngine(lm=smollm, sampling=sampling)


def say(session: EngineSession, audio: np.ndarray, chunk: int = 320) -> list[EngineEvent]:
    """Push 16 kHz audio in 20 ms frames, as the runtime does, then end the turn."""
    events: list[EngineEvent] = []
    for start in range(0, audio.size, chunk):
        events += session.push_audio(audio[start : start + chunk], start / 16000)
    return events + session.end_turn()


def final_text(events: list[EngineEvent]) -> str:
    """The final transcript that ends a turn's events (from `say`)."""
    last = events[-1]
    assert isinstance(last, TranscriptDelta) and last.final
    return last.text


@pytest.fixture(scope="module")
def france_turn(engine: EmbeddedEngine) -> tuple[EmbeddedSession, list[EngineEvent], list[EngineEvent]]:
    session = engine.open_session()
    heard = say(session, spoken(FRANCE, FRANCE_VOICE))
    return session, heard, list(session.respond())


def test_implements_the_engine_interface(engine: EmbeddedEngine) -> None:
    assert isinstance(engine, Engine)
    assert (engine.name, engine.input_sample_rate, engine.output_sample_rate) == ("embedded", 16000, 24000)
    session = engine.open_session(instructions="Answer in French.", voice="espeak-female")
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
    # Whisper revises its hypotheses; the deltas carry only new stable words, so appended they are the
    # start of the final transcript (each hypothesis used to be sent whole: "What isWhat is the ...")
    assert final.text.startswith("".join(p.text for p in partials)), (partials, final)
    assert final.final and "capital" in final.text.lower() and "france" in final.text.lower()


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


def test_spoken_reply_is_recognised_back(engine: EmbeddedEngine, france_turn: tuple) -> None:
    """Round trip: the reply's 24 kHz speech (Piper joe), resampled to 16 kHz and said to a new session of the
    same engine, is heard as the reply's words. Measured WER: 0.00-0.09 over six replies (Piper draws
    its noise inside the graph, so the audio differs run to run); the bound leaves room for a word or two of
    a ~15-word reply. Against another sentence the same transcript scores ~1.0."""
    _, _, events = france_turn
    assert isinstance(engine.open_session().synth, PiperSynthesizer)  # the default voice is the neural one
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    audio = resample(pcm, 24000, 16000)
    assert abs(audio.size / 16000 - events[-1].stats["speech_s"]) < 0.1
    heard = final_text(say(engine.open_session(), audio))
    errors = word_errors(events[-1].text, heard)
    assert errors.reference_words >= 8, events[-1].text
    assert errors.rate <= 0.2, (events[-1].text, heard)
    other = "Whales are large mammals that live in every ocean and sing songs to one another over long distances."
    assert word_errors(other, heard).rate >= 0.85


def test_transcript_is_given_to_the_lm_as_a_sentence() -> None:
    assert as_sentence("what is the capital of france") == "What is the capital of france?"
    assert as_sentence("i think i'm tired") == "I think I'm tired."
    assert as_sentence("") == ""
    # Whisper writes sentences: their own end punctuation stays
    assert as_sentence("What is the capital of France?") == "What is the capital of France?"
    assert as_sentence("Tell me a joke!") == "Tell me a joke!"
    assert as_sentence("What a day.") == "What a day."
    assert as_sentence("How far is it") == "How far is it?"


def test_barge_in_keeps_only_what_was_played(engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime abandons a reply after its first phrase was played and says so with interrupt(): the history
    keeps that phrase and nothing else, the cache is rolled back to the start of the reply, and the next turn
    feeds the kept phrase and the new question, then is answered and spoken from a clean start.

    What the recogniser makes of the two questions is not the point here (test_transcripts_partial_then_final
    checks that), so the checks below hold for whatever words were heard, as long as some were."""
    session = engine.open_session()
    chat, cache, tok = session.chat, session.chat.state.cache, session.chat.lm.tokenizer
    system = chat.messages[0]
    first = final_text(say(session, spoken("Tell me about the moon.")))
    assert first
    reply_cache_start = cache.length  # the system prompt, prefilled while the user spoke ...
    reply = session.respond()
    assert isinstance(reply, Generator)  # closed below, as the runtime closes an abandoned reply
    played = next(e for e in reply if isinstance(e, AudioChunk)).text
    # ... let generation run past the played phrase, so that the interrupt has generated text to drop
    for event in reply:
        assert not isinstance(event, ReplyDone), "the reply ended within its first phrase: nothing to cut"
        if isinstance(event, TextDelta):
            break
    reply.close()  # the runtime abandons the reply ...
    reply_cache_start += chat.last.prompt_tokens  # ... plus the first question: where the reply's tokens begin
    generated = chat.messages[-1]["content"]
    assert played and generated.startswith(played) and len(generated) > len(played)
    assert cache.length == reply_cache_start + chat.last.new_tokens

    session.interrupt(played)  # ... and says what the user heard
    question = {"role": "user", "content": as_sentence(first)}
    assert chat.messages == [system, question, {"role": "assistant", "content": played}]
    assert cache.length == reply_cache_start  # none of the cut reply's tokens is left in the cache

    synthesised: list[np.ndarray] = []  # the next reply's speech as the voice made it (Piper's noise is random)
    synth_int16 = session.synth.synth_int16

    def recording_synth_int16(text: str) -> np.ndarray:
        synthesised.append(synth_int16(text))
        return synthesised[-1]

    monkeypatch.setattr(session.synth, "synth_int16", recording_synth_int16)
    second = final_text(say(session, spoken(FRANCE, FRANCE_VOICE)))
    assert second
    events = list(session.respond())
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.text and not any(isinstance(e, ReplyDone) for e in events[:-1])
    assert done.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert chat.messages == [
        system, question, {"role": "assistant", "content": played},
        {"role": "user", "content": as_sentence(second)}, {"role": "assistant", "content": done.text},
    ]  # fmt: skip
    # The turn prefilled exactly what the template adds after the start of the cut reply: the played phrase,
    # the end of that turn and the new question; nothing was fed twice, nothing of the cut text at all.
    cut_at = tok.render_chat(chat.messages[:2], add_generation_prompt=True)
    prompt = tok.render_chat(chat.messages[:4], add_generation_prompt=True)
    assert prompt.startswith(cut_at) and played in prompt[len(cut_at) :]
    assert chat.last.prompt_tokens == len(tok.encode(prompt[len(cut_at) :]))
    assert cache.length == reply_cache_start + chat.last.prompt_tokens + chat.last.new_tokens
    # The new reply's speech starts clean: its first phrase is exactly what a fresh resampler makes of that
    # phrase's synthesised speech, with no tail of the cut reply's audio in front.
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks and "".join(c.text for c in chunks) == done.text and synthesised
    resampler = StreamingResampler(session.synth.sample_rate, engine.output_sample_rate)
    fresh = resampler.push(synthesised[0])
    if len(chunks) == 1:  # a one-phrase reply: its only chunk also carries the end of the stream
        fresh = np.concatenate([fresh, resampler.flush()])
    assert fresh.size and np.array_equal(chunks[0].pcm, fresh)


def test_nothing_heard_gives_an_empty_reply(engine: EmbeddedEngine) -> None:
    session = engine.open_session()
    assert session.end_turn() == [TranscriptDelta("", final=True)]
    events = list(session.respond())
    assert len(events) == 1 and isinstance(events[0], ReplyDone) and events[0].text == ""
    assert len(session.chat.messages) == 1  # only the system prompt: nothing was answered


# What the server probe sent as voice names (issue 16): a buffer overflow in espeak-ng, a hang on a device file,
# a file's lines in the log. Each must be refused by name before anything reaches espeak-ng.
PROBE_VOICES = ("en-us+" + "x" * 40, "../" * 9 + "dev/zero", "../" * 9 + "etc/passwd", "en-us", "Joe", "")


def test_voices_come_from_the_fixed_list(engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[str] = []
    for cls in (Synthesizer, PiperSynthesizer):  # any synthesis at all would be recorded (and is not expected)
        monkeypatch.setattr(cls, "synth_int16", lambda self, text: reached.append(text) or np.zeros(0, np.int16))
    for name in PROBE_VOICES:
        with pytest.raises(VoiceError, match="unknown voice") as e:
            engine.open_session(voice=name)
        assert "joe" in str(e.value) and "alloy" in str(e.value)  # the message lists what is accepted
    assert reached == []  # (espeak-ng's voice lookup is where a name would have become a path)
    monkeypatch.undo()
    for name in VOICES:
        assert engine.open_session(voice=name).synth is engine.voices.synthesizer(name)
    for name, key in REALTIME_VOICES.items():  # OpenAI Realtime voice names map onto the fixed list
        assert key in VOICES and voice_key(name) == key
        assert engine.open_session(voice=name).synth is engine.voices.synthesizer(key)
    espeak = engine.open_session(voice="espeak-british")
    assert isinstance(espeak.synth, Synthesizer) and espeak.synth.voice.name == "en-gb-x-rp"
    assert espeak.synth.synth_int16("Hello there.").size > 0


def _push(session: EngineSession, audio: np.ndarray, chunk: int = 320) -> list[EngineEvent]:
    return [e for start in range(0, audio.size, chunk) for e in session.push_audio(audio[start : start + chunk], 0.0)]


def test_a_turn_prepared_at_the_pause_ends_without_recognition_left(
    engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = spoken(FRANCE, FRANCE_VOICE)
    plain, session = engine.open_session(), engine.open_session()
    want_heard = final_text(say(plain, audio))
    want = list(plain.respond())
    _push(session, audio)
    history = session.chat.state.cache.length  # the system prompt, prefilled at the first audio
    assert session.recognizer.in_utterance
    prepared = session.prepare_turn()  # no final transcript yet: the turn may go on
    assert [type(e) for e in prepared] == [TurnEndLikely]  # only how likely the turn is finished (omni.streaming.vad)
    assert session.chat.state.cache.length >= history + 8  # the user's sentence is in the cache
    assert not session.recognizer.in_utterance  # recognised at the pause (benchmarks/embedded_turns.py times it)
    finishes: list[str] = []
    monkeypatch.setattr(session.recognizer, "finish", lambda: finishes.append("finish") or "")
    heard = session.end_turn()
    assert finishes == []  # end_turn had nothing left to recognise
    assert heard == [TranscriptDelta(want_heard, final=True)]
    got = list(session.respond())
    assert [e.text for e in got if isinstance(e, TextDelta)] == [e.text for e in want if isinstance(e, TextDelta)]
    stats, plain_stats = got[-1].stats, want[-1].stats  # type: ignore[union-attr]
    assert stats["prompt_tokens"] <= 4 < plain_stats["prompt_tokens"]  # only the assistant header was left


def test_a_turn_that_goes_on_after_the_pause_is_recognised_whole(engine: EmbeddedEngine) -> None:
    first, rest = spoken("What is the capital", FRANCE_VOICE), spoken("of France?", FRANCE_VOICE)
    session = engine.open_session()
    before_pause = _push(session, first)
    session.prepare_turn()
    prepared = session.chat.state.cache.length
    partials = before_pause + _push(session, rest)  # the user goes on: the speculative turn is rolled back
    assert session.chat.state.cache.length < prepared
    # and the recogniser reopened the utterance: one utterance keeps the LM's context across the pause (in our
    # runs "How can I" + "sleep better?" gave "how can i sleep better"; as two utterances "how can are you
    # sleep better")
    assert session.recognizer.in_utterance and session._pieces == []
    assert partials and all(isinstance(p, TranscriptDelta) and not p.final for p in partials)
    heard = final_text(session.end_turn())
    shown = "".join(p.text for p in partials)  # the captions continue across the pause, append-only
    assert shown and heard.startswith(shown), (shown, heard)
    assert "capital" in heard and len(heard.split()) >= 4
    got = "".join(e.text for e in session.respond() if isinstance(e, TextDelta))
    fresh = engine.open_session()  # the same transcript answered by a session that never prepared anything
    fresh.chat.prefill_history()
    assert got == fresh.chat.reply(as_sentence(heard))


def test_sessions_share_the_engines_weights_and_keep_their_own_state(engine: EmbeddedEngine) -> None:
    a, b = engine.open_session(), engine.open_session()
    assert a.recognizer is not None and b.recognizer is not None
    assert a.recognizer is not b.recognizer and a.recognizer.model is b.recognizer.model is engine.asr
    assert a.synth is b.synth  # the voice's weights are loaded once per engine
    _push(a, spoken(FRANCE, FRANCE_VOICE))
    assert a.recognizer.in_utterance and not b.recognizer.in_utterance  # audio of one session only


def test_a_text_only_engine_loads_no_recogniser(smollm: LoadedLM) -> None:
    text = EmbeddedEngine(lm=smollm, speak=False, listen=False, sampling=SamplingConfig(max_new_tokens=4))
    assert text.asr is None
    s = text.open_session()
    with pytest.raises(RuntimeError, match="listen=False"):
        s.push_audio(np.zeros(320, np.float32), 0.0)
    events = s.push_text("Hi.") + list(s.respond())
    assert isinstance(events[-1], ReplyDone) and not any(isinstance(e, AudioChunk) for e in events)


def test_a_typed_turn_is_answered_as_written(engine: EmbeddedEngine) -> None:
    s = engine.open_session()
    events = s.push_text("What is the capital of France?") + list(s.respond())
    assert not [e for e in events if isinstance(e, TranscriptDelta)]  # nothing was heard
    done = events[-1]
    assert isinstance(done, ReplyDone) and "Paris" in done.text
    assert [e for e in events if isinstance(e, AudioChunk) and len(e.pcm)]  # and spoken
    assert s.chat.messages[-2] == {"role": "user", "content": "What is the capital of France?"}


def test_per_reply_instructions_guide_that_reply_only(engine: EmbeddedEngine) -> None:
    """`response.create` with `response.instructions` (and text-only output): the same question to two sessions,
    one reply with instructions; greedy decoding, so the replies differ only if the instructions reached the LM.
    The next turn has none, and the session's system prompt never changed."""
    question, instructions = "What is the capital of France?", "Talk like a pirate: start your reply with Arr."
    plain, guided = engine.open_session(), engine.open_session()
    try:
        plain.push_text(question)
        a = list(plain.respond(ResponseOptions(speech=False)))
        guided.push_text(question)
        b = list(guided.respond(ResponseOptions(speech=False, instructions=instructions)))
        assert isinstance(a[-1], ReplyDone) and isinstance(b[-1], ReplyDone)
        print(f"\nwithout instructions: {a[-1].text!r}\nwith {instructions!r}: {b[-1].text!r}")
        assert not [e for e in b if isinstance(e, AudioChunk)]  # text only, as asked
        assert a[-1].text != b[-1].text, "the reply did not change with the instructions"
        assert guided.chat.messages[-3:-1] == [{"role": "system", "content": instructions},
                                               {"role": "user", "content": question}]
        guided.push_text("And of Germany?")
        c = list(guided.respond(ResponseOptions(speech=False)))
        assert isinstance(c[-1], ReplyDone)
        assert guided.chat.messages[-3]["role"] == "assistant"  # no instructions before the next user message
        assert guided.chat.messages[0] == plain.chat.messages[0] and guided.chat.messages[0]["role"] == "system"
        assert [m["content"] for m in guided.chat.messages].count(instructions) == 1
    finally:
        plain.close()
        guided.close()


async def test_a_typed_turn_through_the_session_runtime(
    engine: EmbeddedEngine, worker: DeviceWorker, vad: SileroVad
) -> None:
    _, text = await typed_turn(engine, worker, vad, "What is the capital of France?")
    assert "Paris" in text


def reply_of(session: EmbeddedSession, options: ResponseOptions) -> str:
    done = list(session.respond(options))[-1]
    assert isinstance(done, ReplyDone)
    return done.text


def test_discarded_audio_is_forgotten_by_the_recogniser_and_the_lm(engine: EmbeddedEngine) -> None:
    """`discard_audio` (input_audio_buffer.clear): a turn recognised and prefilled at a pause is rolled back, an
    utterance still open is dropped untranscribed; a typed question after it is answered as if nothing was said."""
    audio = spoken(FRANCE, FRANCE_VOICE)
    session, fresh = engine.open_session(), engine.open_session()
    try:
        _push(session, audio)
        history = session.chat.state.cache.length  # the system prompt, prefilled at the first audio
        session.prepare_turn()
        assert session.chat.state.cache.length > history and session._pieces
        session.discard_audio()
        assert session.chat.state.cache.length == history and session._pieces == []
        assert not session.recognizer.in_utterance and not session.recognizer.resume()  # nothing to reopen
        _push(session, audio[: len(audio) // 2])
        assert session.recognizer.in_utterance
        session.discard_audio()
        assert not session.recognizer.in_utterance
        question = "What is the capital of Germany?"
        session.push_text(question)
        assert session.end_turn() == []  # nothing heard: no transcript
        fresh.push_text(question)
        assert reply_of(session, ResponseOptions(speech=False)) == reply_of(fresh, ResponseOptions(speech=False))
        assert session.chat.messages == fresh.chat.messages
    finally:
        session.close()
        fresh.close()


def test_instructions_changed_mid_conversation_guide_the_replies_from_the_next_on(engine: EmbeddedEngine) -> None:
    """`set_instructions` after a reply: the next reply is the one its own instructions would give (the same
    system message before the user's), the session's first system prompt is unchanged, and the reply after that
    gets no second copy."""
    instructions = "Talk like a pirate: start your reply with Arr."
    changed, asked = engine.open_session(), engine.open_session()
    try:
        for s in (changed, asked):
            s.push_text("What is the capital of France?")
            reply_of(s, ResponseOptions(speech=False))
        changed.set_instructions(instructions)
        changed.push_text("And of Germany?")
        asked.push_text("And of Germany?")
        a = reply_of(changed, ResponseOptions(speech=False))
        b = reply_of(asked, ResponseOptions(speech=False, instructions=instructions))
        print(f"\nafter set_instructions({instructions!r}): {a!r}")
        assert a == b and changed.chat.messages == asked.chat.messages
        assert changed.chat.messages[-3] == {"role": "system", "content": instructions}
        assert changed.chat.messages[0]["content"] != instructions  # the opening prompt stays where it is
        for s in (changed, asked):
            s.push_text("And of Spain?")
        assert reply_of(changed, ResponseOptions(speech=False)) == reply_of(asked, ResponseOptions(speech=False))
        assert [m["content"] for m in changed.chat.messages].count(instructions) == 1
    finally:
        changed.close()
        asked.close()
