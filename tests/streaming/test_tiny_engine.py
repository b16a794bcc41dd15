"""The tiny random-weight engine: the real decoder path (prefill while speaking, seeded decode over the bounded
sink + window cache) through the session runtime, barge-in rollback, session isolation and bounded memory.

"The cache holds the conversation" is checked by behaviour, not by bookkeeping: the session's cache, fed its
pending tokens and one probe token, must give the same logits as a fresh cache fed the whole conversation
rendered from the text history (float32 on CPU; chunked and one-shot prefill differ only in summation order,
~1e-6, hence the 1e-4 tolerance).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from omni.app.serve import make_engine
from omni.streaming.engine import AudioChunk, EngineEvent, ReplyDone, ResponseOptions, TextDelta, TranscriptDelta
from omni.streaming.engines.tiny import ASSISTANT, END, SYSTEM, USER, TinyLMEngine, TinyLMSession, conversation_tokens
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness


def assert_cache_holds_conversation(engine: TinyLMEngine, s: TinyLMSession) -> None:
    expected = conversation_tokens(engine.tokenizer, s.instructions, s.history)
    assert s.state.cache.length + len(s.pending) == len(expected)
    live = engine.model(copy.deepcopy(s.state), input_ids=torch.tensor([[*s.pending, ASSISTANT]])).logits
    fresh = engine.model.init_state(engine.cache_config)
    offline = engine.model(fresh, input_ids=torch.tensor([[*expected, ASSISTANT]])).logits
    torch.testing.assert_close(live, offline, rtol=1e-4, atol=1e-4)


def speak(s: TinyLMSession, seconds: float, loudness: float, seed: int = 0) -> list[EngineEvent]:
    """Push noise in 20 ms frames (as the runtime does) and end the turn."""
    rng = np.random.default_rng(seed)
    pcm = (loudness * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    out: list[EngineEvent] = []
    for i in range(0, len(pcm), 320):
        out += s.push_audio(pcm[i : i + 320], i / 16000)
    return out + s.end_turn()


def reply_text(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_turn_through_the_session_runtime(
    worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = TinyLMEngine()
    h = Harness(engine, worker, vad, media=media)
    async with h.running():
        await h.say(speech16k)
        metrics = await h.wait_for("omni.metrics")
        s = h.session.engine_session
        assert isinstance(s, TinyLMSession)
        history = list(s.history)
        await worker.run(assert_cache_holds_conversation, engine, s)
    final = next(e for e in h.events if e["type"] == "conversation.item.input_audio_transcription.completed")
    partial = [e["delta"] for e in h.events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    text = h.completed_reply()
    assert len(partial) >= 3 and final["transcript"].startswith("".join(partial))  # ~4 s of speech, 1 word/s
    assert not metrics["interrupted"]
    assert history == [("user", final["transcript"]), ("assistant", text)]
    assert engine.min_new_tokens <= len(text) <= engine.sampling.max_new_tokens
    played = np.concatenate(h.played).astype(np.float32) / 32768
    assert np.sqrt(np.mean(played**2)) > 0.05  # the reply's tones reached the track
    assert engine.open_sessions == 0 and s.closed


async def test_barge_in_keeps_only_the_played_text(
    worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    # speech at 0.1 s per character, decoding at 0.04 s per step: text runs ahead of the speech, and the reply
    # is still being generated (1-1.3 s) when the user talks over it
    engine = TinyLMEngine(step_delay=0.04, seconds_per_char=0.1, min_new_tokens=24, max_new_tokens=32)
    h = Harness(engine, worker, vad, SessionConfig(turn=TurnConfig(silence_ms=700)), media=media)
    async with h.running():
        await h.say(speech16k)
        started = await h.wait_for("output_audio_buffer.started")
        await h.feed(speech16k[:16000], realtime=True)  # talk over the reply
        cancelled = await h.wait_for("response.done")
        await h.silence(1.0, realtime=True)  # end the barge-in turn: the engine answers it
        second = await h.wait_for(lambda e: e["type"] == "response.done" and e is not cancelled)
        s = h.session.engine_session
        assert isinstance(s, TinyLMSession)
        history = list(s.history)
        await worker.run(assert_cache_holds_conversation, engine, s)
    rid = started["response_id"]
    generated = "".join(
        e["delta"] for e in h.events if e["type"] == "response.output_text.delta" and e["response_id"] == rid
    )
    played = cancelled["response"]["output"][0]["content"][0]["transcript"]
    assert cancelled["response"]["id"] == rid and cancelled["response"]["status"] == "cancelled"
    assert generated.startswith(played) and len(played) < len(generated)  # text runs ahead of speech
    assert [role for role, _ in history] == ["user", "assistant", "user", "assistant"]
    assert history[1] == ("assistant", played)  # what the user heard, and nothing more, is remembered
    assert history[3][1] == second["response"]["output"][0]["content"][0]["transcript"]


def first_steps(it: Iterator[EngineEvent], n_text: int) -> str:
    """Advance a reply until it has produced `n_text` characters, then abandon it (cancellation)."""
    text = ""
    for ev in it:
        if isinstance(ev, TextDelta):
            text += ev.text
            if len(text) >= n_text:
                break
    close = getattr(it, "close", None)
    if close is not None:
        close()
    return text


def test_interrupt_rolls_the_cache_back_to_the_played_text() -> None:
    engine = TinyLMEngine(min_new_tokens=20)
    s = engine.open_session(instructions="Answer briefly.")
    speak(s, 2.5, 0.05)
    generated = first_steps(s.respond(), 12)
    s.interrupt(generated[:5])
    assert list(s.history)[-1] == ("assistant", generated[:5])
    assert s.pending == [*engine.tokenizer.encode(generated[:5]), END]
    assert_cache_holds_conversation(engine, s)

    final = speak(s, 1.2, 0.3)  # the next turn's prefill starts with the played text
    assert isinstance(final[-1], TranscriptDelta) and final[-1].final
    assert_cache_holds_conversation(engine, s)
    events = list(s.respond())
    assert isinstance(events[-1], ReplyDone) and events[-1].text == reply_text(events)
    assert "".join(e.text for e in events if isinstance(e, AudioChunk)) == events[-1].text

    # a finished reply truncated later (conversation.item.truncate) while the user speaks again
    rng = np.random.default_rng(1)
    s.push_audio((0.2 * rng.standard_normal(16000)).astype(np.float32), 10.0)  # one word, the turn still open
    s.interrupt(events[-1].text[:3])
    assert [e for e in s.history][-1] == ("assistant", events[-1].text[:3])
    s.end_turn()
    assert_cache_holds_conversation(engine, s)


def test_per_reply_instructions_guide_that_reply_only() -> None:
    """`response.create` instructions: a system message right before the reply's prompt, kept in the history as
    what that reply was made from; the next reply gets none."""
    plain, guided = TinyLMEngine(seed=3).open_session(), TinyLMEngine(seed=3).open_session()
    for s in (plain, guided):
        speak(s, 2.0, 0.05)
    tok = guided.engine.tokenizer
    before = guided.state.cache.length + len(guided.pending)
    it = guided.respond(ResponseOptions(instructions="  Speak like a pirate. "))
    first = next(it)  # the first step prefills the prompt
    assert guided.state.cache.length == before + len([SYSTEM, *tok.encode("Speak like a pirate."), END]) + 1
    guided_text = (first.text if isinstance(first, TextDelta) else "") + reply_text(list(it))
    list(plain.respond())
    assert list(guided.history)[-2:] == [("system", "Speak like a pirate."), ("assistant", guided_text)]
    assert_cache_holds_conversation(guided.engine, guided)
    probe = torch.tensor([[*guided.pending, ASSISTANT]])  # and the model's next-step logits differ
    live = [e.model(copy.deepcopy(x.state), input_ids=probe).logits for e, x in
            ((guided.engine, guided), (plain.engine, plain))]
    assert not torch.allclose(live[0], live[1], rtol=1e-3, atol=1e-3)

    speak(guided, 1.5, 0.2, seed=2)  # the next turn: no instructions in its prompt
    n = guided.state.cache.length + len(guided.pending)
    it = guided.respond()
    next(it)
    assert guided.state.cache.length == n + 1
    list(it)
    assert [r for r, _ in guided.history].count("system") == 1
    assert_cache_holds_conversation(guided.engine, guided)

    # barge-in on a guided reply keeps the instructions and the played text
    speak(guided, 1.0, 0.1, seed=3)
    played = first_steps(guided.respond(ResponseOptions(instructions="Be brief.")), 6)[:3]
    guided.interrupt(played)
    assert list(guided.history)[-2:] == [("system", "Be brief."), ("assistant", played)]
    assert_cache_holds_conversation(guided.engine, guided)


def test_sessions_are_independent() -> None:
    """Session 0 of an engine gives the same replies alone as beside a busy session 1, steps interleaved."""
    alone = TinyLMEngine(seed=7).open_session()
    replies = []
    for k in range(2):
        speak(alone, 2.0 + k, 0.05, seed=k)
        replies.append(reply_text(list(alone.respond())))

    engine = TinyLMEngine(seed=7)
    s0, s1 = engine.open_session(), engine.open_session(instructions="Different.")
    got = []
    for k in range(2):
        speak(s1, 3.0, 0.5, seed=10 + k)
        speak(s0, 2.0 + k, 0.05, seed=k)
        it0, it1 = s0.respond(), s1.respond()
        events0: list[EngineEvent] = []
        for ev in it0:
            events0.append(ev)
            next(it1, None)  # the other session decodes between every step of this one
        list(it1)
        got.append(reply_text(events0))
        s1.interrupt("x")  # and rolls its cache back: nothing of it may reach session 0
    assert got == replies
    assert s0.state.cache.k.data_ptr() != s1.state.cache.k.data_ptr()
    assert list(s0.history) == list(alone.history) != list(s1.history)


def test_memory_stays_bounded_over_many_turns() -> None:
    engine = TinyLMEngine(window=32, max_history=8, min_new_tokens=8, max_new_tokens=24)
    s = engine.open_session(instructions="Keep it short.")
    cache = s.state.cache
    buffers = (cache.k.data_ptr(), cache.v.data_ptr(), cache.nbytes())
    for turn in range(40):
        speak(s, 1.0 + (turn % 3) * 0.5, 0.05 * (1 + turn % 4), seed=turn)
        it = s.respond()
        if turn % 5 == 4:
            s.interrupt(first_steps(it, 10)[:4])  # barge-ins after the ring has wrapped still work
        else:
            events = list(it)
            assert isinstance(events[-1], ReplyDone) and events[-1].text
    assert cache.length > 10 * cache.cfg.capacity  # the ring wrapped many times
    assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.nbytes()) == buffers  # never reallocated or grown
    assert len(s.history) == 8 and len(s.pending) <= engine.sampling.max_new_tokens + 1
    assert s.sampler.seen.shape == (1, engine.config.vocab_size)


def test_bad_input_is_refused_with_a_clear_message() -> None:
    s = TinyLMEngine().open_session()
    with pytest.raises(ValueError, match="float32 mono"):
        s.push_audio(np.zeros(320, np.int16), 0.0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        TinyLMEngine(min_new_tokens=50, max_new_tokens=10)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.end_turn()


def test_transcript_follows_the_audio() -> None:
    quiet, loud = TinyLMEngine().open_session(), TinyLMEngine().open_session()
    q, lo = speak(quiet, 2.0, 0.003), speak(loud, 2.0, 0.5)
    assert [e.text for e in q if isinstance(e, TranscriptDelta)][-1] != [
        e.text for e in lo if isinstance(e, TranscriptDelta)
    ][-1]
    assert speak(TinyLMEngine().open_session(), 2.0, 0.003) == q  # deterministic
    assert conversation_tokens(quiet.engine.tokenizer, None, [("user", "mu")])[0] == USER


def test_omni_serve_can_run_the_tiny_engine() -> None:
    from omni.app.cli import build_parser

    args = build_parser().parse_args(["serve", "--engine", "tiny"])
    engine = make_engine(args.engine)
    assert isinstance(engine, TinyLMEngine) and engine.name == "tiny"


def noise(seconds: float, loudness: float, seed: int) -> np.ndarray:
    return (loudness * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_discarded_audio_leaves_the_session_as_if_it_never_came() -> None:
    """`discard_audio` (input_audio_buffer.clear): 2.3 s of audio were prefilled word by word while they came;
    once discarded, the session holds what a twin that never heard them holds (cache, pending tokens, and the
    next turn's reply, seeded alike); audio before a typed message stays."""
    heard, twin = TinyLMEngine(seed=3).open_session(), TinyLMEngine(seed=3).open_session()
    for s in (heard, twin):
        speak(s, 2.0, 0.05)
        list(s.respond())
    n = heard.state.cache.length
    pcm = noise(2.3, 0.3, seed=7)
    words = [e for i in range(0, len(pcm), 320) for e in heard.push_audio(pcm[i : i + 320], i / 16000)]
    assert len(words) == 2 and heard.state.cache.length > n  # prefilled while it came
    heard.discard_audio()
    assert heard.state.cache.length == twin.state.cache.length and heard.pending == twin.pending
    heard.discard_audio()  # nothing open: nothing to do
    for s in (heard, twin):
        speak(s, 1.5, 0.2, seed=2)
    assert list(heard.history) == list(twin.history)
    assert reply_text(list(heard.respond())) == reply_text(list(twin.respond()))
    assert_cache_holds_conversation(heard.engine, heard)
    # audio, a typed message, more audio: the discard takes back only the audio after the message
    for s in (heard, twin):
        s.push_audio(noise(1.0, 0.1, seed=4), 0.0)
        s.push_text("hello")
    heard.push_audio(noise(1.2, 0.3, seed=5), 1.0)
    heard.discard_audio()
    assert heard.state.cache.length == twin.state.cache.length and heard.pending == twin.pending
    assert heard.end_turn() == twin.end_turn()


def test_instructions_changed_mid_conversation_guide_the_replies_from_the_next_on() -> None:
    """`set_instructions` after a reply: the next reply's prompt gets them as a reply's own instructions would
    (the same tokens, the same reply) and they stay in the history; the reply after gets nothing more."""
    changed, asked = TinyLMEngine(seed=4).open_session(), TinyLMEngine(seed=4).open_session()
    for s in (changed, asked):
        speak(s, 2.0, 0.05)
        list(s.respond())
    changed.set_instructions("  Speak like a pirate. ")
    for s in (changed, asked):
        speak(s, 1.5, 0.2, seed=2)
    a = reply_text(list(changed.respond()))
    b = reply_text(list(asked.respond(ResponseOptions(instructions="Speak like a pirate."))))
    assert a == b and list(changed.history) == list(asked.history)
    assert list(changed.history)[-2] == ("system", "Speak like a pirate.")
    for s in (changed, asked):
        speak(s, 1.0, 0.1, seed=3)
    assert reply_text(list(changed.respond())) == reply_text(list(asked.respond()))
    assert [r for r, _ in changed.history].count("system") == 1
    assert_cache_holds_conversation(changed.engine, changed)
