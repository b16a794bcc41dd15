"""The omni engine on a tiny random Qwen2.5-Omni checkpoint (thinker.*, talker.*, token2wav.*, spk_dict.pt):
audio prefilled while the user speaks, text and speech interleaved, barge-in rollback, the session runtime.

"The caches hold the conversation" is checked by behaviour: after a barge-in the next turn must give the same
first-reply logits (float32 on CPU; streamed and one-shot prefill differ only in summation order, ~1e-6, hence
1e-4), the same greedy reply and the same number of Talker codes as a fresh `SpeakingSession` fed, through the
model API alone, the same user audio and only the played text as the assistant's turn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from omni.app.serve import make_engine
from omni.model.conversation import ReplyRecord
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.speech_session import SpeakingSession, SpeechSettings
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import StreamingSchedule
from omni.model.voices import Voice, VoiceBank
from omni.streaming.engine import AudioChunk, EngineEvent, ReplyDone, ResponseOptions, TextDelta
from omni.streaming.engines.omni import OmniEngine, OmniEngineSession
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.model.omni_tiny import IDS, save_tiny_omni
from tests.streaming.engine_input import clip, speak
from tests.streaming.harness import Harness
from tests.streaming.test_text_turns import typed_turn

Models = tuple[LoadedThinker, SpeechModels]
CODES = 80
SCHEDULE = StreamingSchedule(first_chunk_blocks=1, chunk_blocks=1)  # audio after fewer codes: short replies
SOLVER = SolverConfig(num_steps=3)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    _, d = save_tiny_omni(tmp_path_factory.mktemp("omni-engine") / "ckpt")
    g = torch.Generator().manual_seed(0)
    VoiceBank(
        {
            name: Voice(name, IDS["spk_bos"], torch.randn(1, 16, generator=g), torch.randn(1, 60, 80, generator=g) - 4)
            for name in ("Chelsie", "Ethan")
        }
    ).save(Path(d) / "spk_dict.pt")
    return load_thinker(d), load_speech(d)


def make(models: Models, max_new_tokens: int = 40) -> OmniEngine:
    thinker, speech = models
    return OmniEngine(
        None,
        models=models,
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens),
        talker_sampling=speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=CODES),
        seed=0,
        schedule=SCHEDULE,
        solver=SOLVER,
    )


def take_chunks(it: object, k: int) -> list[EngineEvent]:
    """Advance a reply until it has produced `k` audio chunks, then abandon it (barge-in)."""
    out: list[EngineEvent] = []
    assert hasattr(it, "__next__") and hasattr(it, "close")
    while sum(isinstance(e, AudioChunk) for e in out) < k:
        out.append(next(it))
    it.close()
    return out


def test_audio_streams_in_while_speaking_and_the_reply_interleaves_text_and_audio(models: Models) -> None:
    engine = make(models)
    s = engine.open_session()
    pcm = clip(5.5)  # not a multiple of the 2-s block
    before = s.speaking.prefilled_tokens
    for i in range(0, len(pcm), 8000):
        s.push_audio(pcm[i : i + 8000], i / 16000)
        if i + 8000 == 40000:  # 2.5 s pushed: the first block (50 tokens; its last mel frame needs 10 ms beyond
            # 2 s) is in the cache already
            assert s.speaking.prefilled_tokens >= before + 50
    while_speaking = s.speaking.prefilled_tokens
    assert while_speaking >= before + 100  # two whole blocks before the turn ends
    s.end_turn()
    assert s.speaking.prefilled_tokens > while_speaking  # the 1.5-s tail, encoded at the end of the turn
    events = list(s.respond())
    done = events[-1]
    assert isinstance(done, ReplyDone)
    kinds = [type(e).__name__ for e in events]
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert done.stats["new_tokens"] >= 20 and len(texts) >= 3  # byte-level tokens: deltas are whole characters
    last_text = len(kinds) - 1 - kinds[::-1].index("TextDelta")
    assert kinds.index("AudioChunk") < last_text  # speech starts while the text is still being decoded
    assert done.text == "".join(texts)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert "".join(c.text for c in chunks) == done.text  # every character is attached to some audio
    assert sum(len(c.pcm) for c in chunks if len(c.pcm) > 1) == done.stats["codes"] * 480  # not the silent tail
    assert all(c.pcm.dtype == np.float32 for c in chunks) and np.abs(np.concatenate([c.pcm for c in chunks])).max() > 0
    assert list(s.history) == [("user", "[audio 5.5 s]"), ("assistant", done.text)]
    assert s.speaking.talker_state.decoder.cache.length == s.speaking.state.cache.length


def test_streamed_prefill_equals_the_whole_clip_at_the_end_of_the_turn(models: Models) -> None:
    engine = make(models, max_new_tokens=8)
    pcm = clip(4.7, seed=1)
    streamed, whole = engine.open_session(), engine.open_session()
    speak(streamed, pcm, piece=0.37)
    whole.push_audio(pcm, 0.0)
    whole.end_turn()
    it_s, it_w = streamed.respond(), whole.respond()
    assert streamed.speaking.logits is not None and whole.speaking.logits is not None
    torch.testing.assert_close(streamed.speaking.logits, whole.speaking.logits, rtol=1e-4, atol=1e-4)
    end_s, end_w = list(it_s)[-1], list(it_w)[-1]
    assert isinstance(end_s, ReplyDone) and isinstance(end_w, ReplyDone)
    assert end_s.text == end_w.text and end_s.stats["codes"] == end_w.stats["codes"]


def reference_after_cut(models: Models, audio: list[np.ndarray], played: str) -> SpeakingSession:
    """A fresh session fed by the model API: turn 1 (audio, reply = the played text), turn 2's audio."""
    thinker, speech = models
    talker_sampling = speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=CODES)
    settings = SpeechSettings(talker_sampling=talker_sampling, seed=0, schedule=SCHEDULE, solver=SOLVER)
    engine = make(models)
    ref = SpeakingSession(
        thinker.model,
        thinker.prompt,
        thinker.tokenizer,
        speech,
        settings,
        cache=engine.cache,
        talker_cache=engine.talker_cache,
    )
    for k, pcm in enumerate(audio):
        ref.start_user_turn()
        ref.begin_audio()
        ref.push_audio(torch.from_numpy(pcm))
        ref.end_audio()
        ref.end_user_turn()
        if k == 0:
            ref.feed_ids(ref.prompt.text(played) + ref.prompt.turn_end())
    return ref


@pytest.mark.parametrize("cut", ["while_generating", "after_reply_done"])
def test_interrupt_keeps_exactly_the_played_text(models: Models, cut: str) -> None:
    engine = make(models)
    s = engine.open_session()
    first, second = clip(3.0, seed=2), clip(2.5, seed=3)
    speak(s, first)
    it = s.respond()
    if cut == "while_generating":
        events = take_chunks(it, 2)
    else:  # the reply was decoded whole; the user cut in while its second chunk played
        events = list(it)
        assert isinstance(events[-1], ReplyDone)
        events = events[: [i for i, e in enumerate(events) if isinstance(e, AudioChunk)][1] + 1]
    generated = "".join(e.text for e in events if isinstance(e, TextDelta))
    played = "".join(e.text for e in events if isinstance(e, AudioChunk))
    assert played and generated.startswith(played) and len(played) < len(generated)
    s.interrupt(played)
    assert list(s.history)[-1] == ("assistant", played)
    assert s.speaking.talker_state.decoder.cache.length == s.speaking.state.cache.length

    speak(s, second, t0=10.0)
    reply = s.respond()
    ref = reference_after_cut(models, [first, second], played)
    assert s.speaking.state.cache.length == ref.state.cache.length
    assert s.speaking.cursor.next_id == ref.cursor.next_id
    assert s.speaking.logits is not None and ref.logits is not None
    torch.testing.assert_close(s.speaking.logits, ref.logits, rtol=1e-4, atol=1e-4)
    done = list(reply)[-1]
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(done, ReplyDone) and isinstance(want, ReplyRecord)
    assert done.text == want.text and done.stats["codes"] == len(want.codes)
    assert s.speaking.talker_state.decoder.cache.length == ref.talker_state.decoder.cache.length


def test_interrupt_after_the_user_spoke_again_trims_only_the_text(models: Models) -> None:
    s = make(models, max_new_tokens=6).open_session()
    speak(s, clip(1.0))
    done = list(s.respond())[-1]
    assert isinstance(done, ReplyDone) and len(done.text) > 2
    s.push_audio(clip(0.5, seed=5), 5.0)  # the next turn is open: its audio cannot be re-fed
    length = s.speaking.state.cache.length
    s.interrupt(done.text[:2])
    assert list(s.history)[-1] == ("assistant", done.text[:2]) and s.speaking.state.cache.length == length
    s.end_turn()
    assert isinstance(list(s.respond())[-1], ReplyDone)


def test_video_frames_join_the_turn_at_two_frames_per_second(models: Models) -> None:
    engine = make(models, max_new_tokens=4)
    with_video, audio_only = engine.open_session(), engine.open_session()
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(8)]
    pcm = clip(2.5, seed=6)
    with_video.push_video(frames[0], 0.0)
    for i, t in enumerate(np.arange(0.0, 2.5, 0.25)):  # a 4-fps camera: every other frame is dropped
        with_video.push_video(frames[i % len(frames)], float(t))
        with_video.push_audio(pcm[int(t * 16000) : int((t + 0.25) * 16000)], float(t))
    with_video.end_turn()
    speak(audio_only, pcm)
    assert with_video.history[-1] == ("user", "[audio 2.5 s, 6 frames]")  # slots at 0, 0.5, ... 2.5 s
    assert with_video.speaking.prefilled_tokens > audio_only.speaking.prefilled_tokens
    assert isinstance(list(with_video.respond())[-1], ReplyDone)


async def test_a_turn_through_the_session_runtime(
    models: Models, worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = make(models, max_new_tokens=12)
    h = Harness(engine, worker, vad, media=media)
    async with h.running():
        await h.say(speech16k)
        metrics = await h.wait_for("omni.metrics")
        s = h.session.engine_session
        assert isinstance(s, OmniEngineSession)
        history = list(s.history)
    text = h.completed_reply()
    assert not metrics["interrupted"]
    assert [role for role, _ in history] == ["user", "assistant"] and history[1][1] == text
    played = np.concatenate(h.played).astype(np.float32) / 32768
    assert np.abs(played).max() > 0.01  # the reply's speech reached the track
    assert s.closed


def test_bad_input_is_refused_with_a_clear_message(models: Models, tmp_path: Path) -> None:
    engine = make(models)
    s = engine.open_session()
    with pytest.raises(ValueError, match="float32 mono samples"):
        s.push_audio(np.zeros(320, np.int16), 0.0)
    with pytest.raises(ValueError, match="float32 mono samples"):
        s.push_audio(np.zeros((320, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        s.push_audio(np.full(320, np.nan, np.float32), 0.0)
    with pytest.raises(ValueError, match=r"RGB uint8 frame \[H, W, 3\]"):
        s.push_video(np.zeros((4, 4), np.uint8), 0.0)
    with pytest.raises(ValueError, match="unknown voice 'Nobody'; this checkpoint has: Chelsie, Ethan"):
        engine.open_session(voice="Nobody")
    assert engine.open_session(voice="ethan").speaking.voice.name == "Ethan"
    with pytest.raises(ValueError, match="unknown voice"):
        OmniEngine(None, models=models, voice="Nobody")
    with pytest.raises(ValueError, match="cannot load the omni model"):
        OmniEngine(tmp_path / "missing")
    with pytest.raises(ValueError, match="needs --model"):
        make_engine("omni")
    with pytest.raises(ValueError, match="for --engine omni"):
        make_engine("tiny", model=str(tmp_path))
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.end_turn()


def test_omni_serve_builds_the_omni_engine(models: Models) -> None:
    from omni.app.cli import build_parser

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", models[0].source, "--voice", "Ethan"])
    engine = make_engine(args.engine, model=args.model, voice=args.voice, device=args.device)
    assert isinstance(engine, OmniEngine) and engine.name == "omni" and engine.default_voice == "Ethan"
    assert (engine.input_sample_rate, engine.output_sample_rate) == (16000, 24000)


def test_a_typed_turn_with_audio_before_it_equals_the_model_api(models: Models) -> None:
    engine = make(models, max_new_tokens=8)
    s = engine.open_session()
    pcm = clip(2.5, seed=3)
    s.push_audio(pcm, 0.0)
    s.push_text("What did I say?")
    done = list(s.respond())[-1]
    ref = reference_after_cut(models, [], "")
    ref.start_user_turn()
    ref.begin_audio()
    ref.push_audio(torch.from_numpy(pcm))
    ref.end_audio()
    ref.add_text("What did I say?")
    ref.end_user_turn()
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(done, ReplyDone) and isinstance(want, ReplyRecord)
    assert done.text == want.text and done.stats["codes"] == len(want.codes)
    assert list(s.history) == [("user", "[audio 2.5 s]"), ("user", "What did I say?"), ("assistant", done.text)]


def test_per_reply_instructions_are_a_system_turn_for_that_reply_only(models: Models) -> None:
    """`response.instructions`: the reply equals the model API's on user turn, system turn (the instructions),
    assistant; without them (same greedy model, same question) it differs; the next reply gets none."""
    engine = make(models, max_new_tokens=8)
    instructions = "Answer in one word."
    plain, guided = engine.open_session(), engine.open_session()
    plain.push_text("hello")
    a = list(plain.respond(ResponseOptions(speech=False)))[-1]
    guided.push_text("hello")
    b = list(guided.respond(ResponseOptions(speech=False, instructions=instructions)))[-1]
    ref = reference_after_cut(models, [], "")
    ref.start_user_turn()
    ref.add_text("hello")
    ref.feed_ids(ref.prompt.turn_end() + ref.prompt.turn_start("system") + ref.prompt.text(instructions))
    ref.end_user_turn()
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(a, ReplyDone) and isinstance(b, ReplyDone) and isinstance(want, ReplyRecord)
    assert b.text == want.text and a.text != b.text
    # The next reply is the model API's on the next user turn with no system turn before the reply.
    guided.push_text("again")
    c = list(guided.respond(ResponseOptions(speech=False)))[-1]
    ref.start_user_turn()
    ref.add_text("again")
    ref.end_user_turn()
    want2 = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(c, ReplyDone) and isinstance(want2, ReplyRecord) and c.text == want2.text


async def test_a_typed_turn_through_the_session_runtime(models: Models, worker: DeviceWorker, vad: SileroVad) -> None:
    engine = make(models, max_new_tokens=6)
    h, text = await typed_turn(engine, worker, vad, "hello")
    s = engine.open_session()
    s.push_text("hello")
    done = list(s.respond())[-1]
    assert isinstance(done, ReplyDone) and text == done.text
    assert np.abs(np.concatenate(h.played).astype(np.float32)).max() > 0  # the reply's speech reached the track


def test_omni_serve_quantises_the_thinker_at_load(models: Models) -> None:
    from omni.app.cli import build_parser
    from omni.model.layers.quant_linear import Int8Linear

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", models[0].source, "--quant", "int8"])
    engine = make_engine(args.engine, model=args.model, device=args.device, quant=args.quant)
    assert isinstance(engine, OmniEngine)
    layers = engine.thinker.model.lm.layers
    assert all(isinstance(p, Int8Linear) for L in layers for p in (L.self_attn.qkv_proj, L.mlp.down_proj))
    assert engine.speech is not None  # the Talker's decoder too
    talker = engine.speech.talker.decoder.layers
    assert all(isinstance(p, Int8Linear) for L in talker for p in (L.self_attn.o_proj, L.mlp.gate_up_proj))
    with pytest.raises(ValueError, match="--quant are for --engine omni"):
        make_engine("tiny", quant="int8")


def test_discarded_audio_leaves_the_session_as_if_it_never_came(models: Models) -> None:
    """`discard_audio` (input_audio_buffer.clear): 2.5 s of audio were encoded and prefilled block by block while
    they came; once discarded, a typed turn gets the reply (text and Talker codes) and the caches of a session
    that never heard them, whether the audio opened the user turn or followed a first reply."""
    engine = make(models, max_new_tokens=8)
    heard, twin = engine.open_session(), engine.open_session()
    for turn, question in enumerate(("What did I say?", "And now?")):
        before = heard.speaking.state.cache.length
        for i in range(0, 40000, 8000):
            heard.push_audio(clip(2.5, seed=3 + turn)[i : i + 8000], i / 16000)
        assert heard.speaking.state.cache.length > before  # prefilled while it came
        heard.discard_audio()
        assert heard.speaking.state.cache.length == twin.speaking.state.cache.length
        done = []
        for s in (heard, twin):
            s.push_text(question)
            done.append(list(s.respond())[-1])
        a, b = done
        assert isinstance(a, ReplyDone) and isinstance(b, ReplyDone)
        assert a.text == b.text and a.stats["codes"] == b.stats["codes"]
        assert list(heard.history) == list(twin.history)
        assert heard.speaking.talker_state.decoder.cache.length == twin.speaking.talker_state.decoder.cache.length


def test_instructions_changed_mid_conversation_are_a_system_turn_before_the_next_reply(models: Models) -> None:
    """`set_instructions` after a reply: the next reply is the one that a reply's own instructions give (the same
    system turn before it), and the reply after it gets nothing more; None brings back the engine's prompt."""
    engine = make(models, max_new_tokens=8)
    instructions = "Answer in one word."
    changed, asked = engine.open_session(), engine.open_session()
    replies: list[list[str]] = [[], []]
    for i, s in enumerate((changed, asked)):
        s.push_text("hello")
        replies[i].append(list(s.respond(ResponseOptions(speech=False)))[-1].text)  # type: ignore[union-attr]
    changed.set_instructions(instructions)
    for i, (s, options) in enumerate(((changed, ResponseOptions(speech=False)),
                                      (asked, ResponseOptions(speech=False, instructions=instructions)))):
        s.push_text("again")
        replies[i].append(list(s.respond(options))[-1].text)  # type: ignore[union-attr]
        s.push_text("and again")
        replies[i].append(list(s.respond(ResponseOptions(speech=False)))[-1].text)  # type: ignore[union-attr]
    assert replies[0] == replies[1]
    assert changed.speaking.state.cache.length == asked.speaking.state.cache.length
    changed.set_instructions(None)
    assert changed._take_instructions(ResponseOptions()).instructions == engine.system_prompt
