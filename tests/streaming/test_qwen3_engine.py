"""The omni engine on a tiny random Qwen3-Omni checkpoint (tests/model/qwen3_tiny.py): the same engine as
Qwen2.5-Omni's (omni/streaming/engines/omni.py) with a `Qwen3ThinkerSession` per conversation (text replies), or a
`Qwen3VoiceSession` (omni/model/qwen3/voice_session.py) when the speech part is loaded.

The spoken reply is checked against the speech API fed by hand: a `Qwen3ThinkerSession` tapping the Talker's
layer, its user turn given to `Qwen3SpeakingSession.feed_user_turn` (positions from `rope_index`), the reply
tokens pushed one by one: same frames, same PCM.

"The engine's caches hold the conversation" is checked by behaviour: the reply (greedy) and the first-reply
logits equal those of a `Qwen3ThinkerSession` fed the same input through the model API alone (1e-4: streamed
and one-shot prefill differ only in summation order in float32), also after a barge-in, where the reference is
fed only the played text as the assistant's turn.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.app.serve import make_engine
from omni.model.conversation import ReplyRecord
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.family import QWEN3_OMNI_MOE
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.qwen3.speech import Qwen3SpeakingSession, Qwen3SpeechModels, Qwen3SpeechSettings, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.model.thinker import VideoInput
from omni.streaming.engine import AudioChunk, Image, ReplyDone, ResponseOptions, TextDelta, VideoClip
from omni.streaming.engines.omni import OmniEngine, OmniEngineSession
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.streaming.engine_input import clip, speak
from tests.streaming.harness import Harness
from tests.streaming.test_text_turns import typed_turn


@pytest.fixture(scope="module")
def loaded(qwen3_tiny_dir: Path) -> LoadedQwen3:
    return load_qwen3(qwen3_tiny_dir)


FRAMES = 12
TALKER = dataclasses.replace(GREEDY, max_new_tokens=FRAMES)


@pytest.fixture(scope="module")
def speech(qwen3_tiny_dir: Path) -> Qwen3SpeechModels:
    return load_qwen3_speech(qwen3_tiny_dir)


def voiced(loaded: LoadedQwen3, speech: Qwen3SpeechModels, max_new_tokens: int = 10) -> OmniEngine:
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    return OmniEngine(None, models=(loaded, speech), sampling=sampling, talker_sampling=TALKER, seed=0)


def make(loaded: LoadedQwen3, max_new_tokens: int = 24) -> OmniEngine:
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    return OmniEngine(None, models=(loaded, None), sampling=sampling)


def reference(loaded: LoadedQwen3, engine: OmniEngine) -> Qwen3ThinkerSession:
    """A fresh model-API session with the engine's system prompt and cache."""
    return Qwen3ThinkerSession(loaded.model, loaded.prompt, engine.system_prompt, engine.cache, loaded.tokenizer)


def ref_audio_turn(ref: Qwen3ThinkerSession, pcm: np.ndarray) -> None:
    ref.start_user_turn()
    ref.add_audio(torch.from_numpy(pcm))
    ref.end_user_turn()


def test_the_engine_is_text_only_and_says_so(loaded: LoadedQwen3, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="omni.streaming.engines.omni"):
        engine = make(loaded)
    assert engine.family == QWEN3_OMNI_MOE and engine.speech is None
    assert "no speech part loaded" in caplog.text
    s = engine.open_session()
    assert isinstance(s.speaking, Qwen3ThinkerSession)
    with pytest.raises(ValueError, match="voices are for a speaking engine"):
        engine.open_session(voice="Ethan")


def test_a_spoken_turn_streams_in_and_the_reply_equals_the_model_api(loaded: LoadedQwen3) -> None:
    engine = make(loaded)
    s = engine.open_session()
    pcm = clip(9.5)  # more than one 8-s attention window: the first is prefilled while the user speaks
    before = s.speaking.prefilled_tokens
    for i in range(0, len(pcm), 8000):
        s.push_audio(pcm[i : i + 8000], i / 16000)
    assert s.speaking.prefilled_tokens > before + 1  # audio tokens in the cache before the turn ends
    s.end_turn()
    events = list(s.respond())
    done = events[-1]
    assert isinstance(done, ReplyDone)
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]  # no speech: one empty chunk carries the text
    assert [len(c.pcm) for c in chunks] == [0] and chunks[0].text == "".join(texts)
    # (random byte-level tokens: mostly invalid UTF-8, so the detokenizer may hold text back to the end)
    assert done.text == "".join(texts) and texts and done.stats["new_tokens"] >= 3

    ref = reference(loaded, engine)
    ref_audio_turn(ref, pcm)
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(want, ReplyRecord)
    assert done.text == want.text and done.stats["new_tokens"] == len(want.token_ids)
    assert s.speaking.state.cache.length == ref.state.cache.length
    assert list(s.history) == [("user", "[audio 9.5 s]"), ("assistant", done.text)]


def test_a_typed_turn_with_an_image_equals_the_model_api(loaded: LoadedQwen3) -> None:
    engine = make(loaded, max_new_tokens=8)
    s = engine.open_session()
    rgb = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    s.push_media(Image(rgb))
    s.push_text("What is this?")
    it = s.respond()
    logits = s.speaking.logits
    done = list(it)[-1]
    ref = reference(loaded, engine)
    ref.start_user_turn()
    patches, grid = loaded.model.image_input(torch.from_numpy(rgb), loaded.vision_preprocess)
    ref.add_image(patches, grid)
    ref.add_text("What is this?")
    ref_logits = ref.end_user_turn().clone()
    assert logits is not None
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(done, ReplyDone) and isinstance(want, ReplyRecord)
    assert done.text == want.text and done.stats["new_tokens"] == len(want.token_ids)
    assert list(s.history) == [("user", "[image]"), ("user", "What is this?"), ("assistant", done.text)]


def test_barge_in_keeps_exactly_the_played_text(loaded: LoadedQwen3) -> None:
    engine = make(loaded)
    s = engine.open_session()
    first, second = clip(3.0, seed=2), clip(2.5, seed=3)
    speak(s, first)
    it = s.respond()
    generated = ""
    for ev in it:  # the user cuts in after a few characters
        if isinstance(ev, TextDelta):
            generated += ev.text
            if len(generated) >= 4:
                break
    played = generated[:2]
    s.interrupt(played)
    assert list(s.history)[-1] == ("assistant", played)
    speak(s, second, t0=10.0)
    reply = s.respond(ResponseOptions(speech=False))
    ref = reference(loaded, engine)
    ref_audio_turn(ref, first)
    ref.feed_ids(ref.prompt.text(played) + ref.prompt.turn_end())
    ref_audio_turn(ref, second)
    assert s.speaking.state.cache.length == ref.state.cache.length
    assert s.speaking.cursor.next_id == ref.cursor.next_id
    assert s.speaking.logits is not None and ref.logits is not None
    torch.testing.assert_close(s.speaking.logits, ref.logits, rtol=1e-4, atol=1e-4)
    done = list(reply)[-1]
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(done, ReplyDone) and isinstance(want, ReplyRecord) and done.text == want.text


def _whole_av_turn(loaded: LoadedQwen3, engine: OmniEngine, frames: list[np.ndarray], pcm: np.ndarray,
                   seconds_per_grid: float) -> torch.Tensor:
    """Logits [V] of the first reply token of one user turn holding a video with its audio, computed over the
    whole prompt at once (Qwen3Thinker.prompt_logits, itself equal to transformers: tests/model)."""
    from omni.model.encoders.vision_preprocess import preprocess_video

    m, p = loaded.model, loaded.prompt
    patches, grid, spg = preprocess_video(torch.from_numpy(np.stack(frames)), m.vision_cfg,  # uint8, as sent
                                          loaded.vision_preprocess)
    assert spg == seconds_per_grid
    mel = m.audio_features(torch.from_numpy(pcm), 16000)
    n = loaded.config.thinker.audio_tokens(mel.shape[1])
    ids = (p.system_turn(engine.system_prompt) + p.turn_start("user") + p.video_with_audio(grid, spg, n)
           + p.generation_prompt())
    return m.prompt_logits(torch.tensor(ids), [mel], videos=[VideoInput(patches, grid, spg)],
                           use_audio_in_video=True)[-1]


def test_camera_frames_during_a_spoken_turn_equal_the_whole_prompt(loaded: LoadedQwen3) -> None:
    """A camera frame shown before speech: the spoken turn is a video with its audio (the frame repeated at
    2 fps while the user speaks), prefilled as it streams in."""
    engine = make(loaded, max_new_tokens=4)
    s = engine.open_session()
    rgb = np.random.default_rng(5).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    s.push_video(rgb, 0.0)
    pcm = clip(2.3, seed=6)
    before = s.speaking.prefilled_tokens
    for i in range(0, len(pcm), 8000):
        s.push_audio(pcm[i : i + 8000], i / 16000)
        s.push_video(rgb, min(i + 8000, len(pcm)) / 16000)
    assert s.speaking.prefilled_tokens > before + 20  # patches and audio in the cache before the turn ends
    s.end_turn()
    assert list(s.history)[-1] == ("user", "[audio 2.3 s, 5 frames]")  # a slot every 0.5 s up to 2.3 s
    it = s.respond()
    assert s.speaking.logits is not None
    torch.testing.assert_close(s.speaking.logits, _whole_av_turn(loaded, engine, [rgb] * 5, pcm, 1.0),
                               rtol=1e-4, atol=1e-4)
    assert isinstance(list(it)[-1], ReplyDone)


def test_a_video_clip_with_its_soundtrack_equals_the_whole_prompt(loaded: LoadedQwen3) -> None:
    engine = make(loaded, max_new_tokens=4)
    s = engine.open_session()
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(6)]
    sound = clip(3.0, seed=8)
    s.push_media(VideoClip(frames, 2.0, audio=sound))  # 2 fps: every frame is kept
    it = s.respond()
    assert s.speaking.logits is not None
    torch.testing.assert_close(s.speaking.logits, _whole_av_turn(loaded, engine, frames, sound, 1.0),
                               rtol=1e-4, atol=1e-4)
    assert isinstance(list(it)[-1], ReplyDone)
    assert list(s.history)[0] == ("user", "[video 6 frames, with audio]")


async def test_a_spoken_turn_through_the_session_runtime(
    loaded: LoadedQwen3, worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = make(loaded, max_new_tokens=12)
    h = Harness(engine, worker, vad, media=media)
    async with h.running():
        await h.say(speech16k)
        await h.wait_for("response.done")
        s = h.session.engine_session
        assert isinstance(s, OmniEngineSession)
        history = list(s.history)
    text = h.completed_reply()
    assert text
    assert [role for role, _ in history] == ["user", "assistant"] and history[1][1] == text
    assert s.closed


async def test_a_typed_turn_through_the_session_runtime(
    loaded: LoadedQwen3, worker: DeviceWorker, vad: SileroVad
) -> None:
    engine = make(loaded, max_new_tokens=6)
    _, text = await typed_turn(engine, worker, vad, "hello")
    ref = reference(loaded, engine)
    ref.start_user_turn()
    ref.add_text("hello")
    ref.end_user_turn()
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(want, ReplyRecord) and text == want.text and text


def test_omni_serve_detects_the_family_from_config_json(qwen3_tiny_dir: Path, tmp_path: Path) -> None:
    from omni.app.cli import build_parser

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", str(qwen3_tiny_dir), "--voice", "Aiden"])
    engine = make_engine(args.engine, model=args.model, voice=args.voice, device=args.device)
    assert isinstance(engine, OmniEngine) and engine.family == QWEN3_OMNI_MOE
    assert isinstance(engine.thinker, LoadedQwen3) and isinstance(engine.speech, Qwen3SpeechModels)
    assert engine.default_voice == "aiden" and engine.check_voice(None) == "ethan"
    with pytest.raises(ValueError, match="unknown speaker 'Nobody'; this checkpoint has aiden, chelsie, ethan"):
        engine.open_session(voice="Nobody")
    assert (engine.input_sample_rate, engine.output_sample_rate) == (16000, 24000)
    from omni.model.layers.quant_linear import QuantExperts  # --quant: the Thinker's and the Talker's experts

    quantised = make_engine("omni", model=str(qwen3_tiny_dir), quant="int8")
    assert isinstance(quantised, OmniEngine) and isinstance(quantised.speech, Qwen3SpeechModels)
    assert isinstance(quantised.speech.talker.decoder.layers[0].mlp.experts, QuantExperts)  # type: ignore[union-attr]
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    with pytest.raises(ValueError, match="not an Omni checkpoint"):
        make_engine("omni", model=str(tmp_path))


def test_spoken_replies_equal_the_speech_api_fed_by_hand(loaded: LoadedQwen3, speech: Qwen3SpeechModels) -> None:
    """Two spoken turns (the second's Talker positions continue after the first user turn alone)."""
    engine = voiced(loaded, speech)
    s = engine.open_session(voice="Chelsie")
    assert isinstance(s.speaking, Qwen3VoiceSession) and s.speaking.speech.settings.speaker == "chelsie"
    tk = speech.talker_config
    th = Qwen3ThinkerSession(loaded.model, loaded.prompt, engine.system_prompt, engine.cache, loaded.tokenizer,
                             tap_layer=tk.accept_hidden_layer)
    ref = Qwen3SpeakingSession(speech, loaded.model.lm.embed_tokens.weight,
                               Qwen3SpeechSettings(speaker="chelsie", sampling=TALKER, seed=0), engine.talker_cache)
    p, emb = loaded.prompt, loaded.model.lm.embed_tokens
    head = emb(torch.tensor(p.turn_start("assistant")))
    for k, pcm in enumerate((clip(3.0, seed=7), clip(1.7, seed=6))):
        speak(s, pcm, t0=10.0 * k)
        events = list(s.respond())
        done = events[-1]
        assert isinstance(done, ReplyDone)
        audio = [e for e in events if isinstance(e, AudioChunk)]
        got = np.concatenate([e.pcm for e in audio])
        assert done.stats["codes"] == FRAMES and len(got) == round(done.stats["speech_s"] * 24000) > 0
        assert "".join(e.text for e in audio) == done.text  # every character is attached to some audio

        # by hand: the Thinker's taps of the user turn, rope_index positions, the reply tokens one by one
        th.take_taps()
        th.start_user_turn()
        n_audio = th.add_audio(torch.from_numpy(pcm))
        th.end_user_turn()
        user = (p.turn_start("user") + [loaded.model.cfg.tokens.audio_start] + [tk.audio_token_id] * n_audio
                + [loaded.model.cfg.tokens.audio_end] + p.turn_end())
        taps = th.take_taps()
        embeds = torch.cat([e for e, _ in taps])[: len(user)]
        hidden = torch.cat([h for _, h in taps])[: len(user)]
        assert embeds.shape[0] + len(p.turn_start("assistant")) == sum(e.shape[0] for e, _ in taps)
        ref.feed_user_turn(torch.tensor(user), embeds, hidden, audio_tokens=[n_audio])
        tokens = list(th.generate(engine.sampling, engine.stop_ids))
        ref.begin_reply(head, emb(torch.tensor(tokens[:1]))[0])
        for t in tokens[1:]:
            ref.push_text(emb(torch.tensor([t]))[0])
        ref.end_text()
        want = [c.samples for c in ref.pump()]
        assert done.stats["new_tokens"] == len(tokens) and not ref.replying
        np.testing.assert_allclose(got, torch.cat(want).numpy(), rtol=1e-4, atol=1e-5)


def test_barge_in_stops_the_speech_and_keeps_the_played_text(loaded: LoadedQwen3, speech: Qwen3SpeechModels) -> None:
    engine = voiced(loaded, speech)
    s = engine.open_session()
    first, second = clip(2.0, seed=8), clip(1.5, seed=9)
    speak(s, first)
    it = s.respond()
    events = []
    while sum(isinstance(e, AudioChunk) for e in events) < 3:
        events.append(next(it))
    it.close()  # the user talks over the reply
    played = "ab"  # (the tiny reply's text is held back as invalid UTF-8 until its end: the runtime's played text)
    s.interrupt(played)
    assert isinstance(s.speaking, Qwen3VoiceSession) and not s.speaking.speech.replying
    assert list(s.history)[-1] == ("assistant", played)
    speak(s, second, t0=10.0)
    done = list(s.respond())[-1]
    ref = Qwen3VoiceSession(loaded.model, loaded.prompt, loaded.tokenizer, speech,
                            Qwen3SpeechSettings(sampling=TALKER, seed=0), engine.system_prompt, engine.cache,
                            engine.talker_cache)
    for k, pcm in enumerate((first, second)):
        ref.start_user_turn()
        ref.add_audio(torch.from_numpy(pcm))
        ref.end_user_turn()
        if k == 0:
            ref.feed_ids(ref.prompt.text(played) + ref.prompt.turn_end())
    want = list(ref.respond(engine.sampling, engine.stop_ids))[-1]
    assert isinstance(done, ReplyDone) and isinstance(want, ReplyRecord)
    assert done.text == want.text and done.stats["codes"] == len(want.codes) == FRAMES
    assert round(done.stats["speech_s"] * 24000) == want.samples


async def test_a_spoken_turn_with_speech_through_the_session_runtime(
    loaded: LoadedQwen3, speech: Qwen3SpeechModels, worker: DeviceWorker, media: DeviceWorker, vad: SileroVad,
    speech16k: np.ndarray,
) -> None:
    engine = voiced(loaded, speech)
    h = Harness(engine, worker, vad, media=media)
    async with h.running():
        await h.say(speech16k)
        metrics = await h.wait_for("omni.metrics")
    assert h.completed_reply()
    played = np.concatenate(h.played).astype(np.float32) / 32768
    assert np.abs(played).max() > 0 and metrics["end_of_speech_to_first_audio_ms"] is not None


def test_discarded_audio_and_new_instructions_with_speech(loaded: LoadedQwen3, speech: Qwen3SpeechModels) -> None:
    """Qwen3 with its voice (the Talker's user-turn pieces roll back with the Thinker): audio discarded in the
    middle of the conversation leaves a session whose next spoken reply (text, codes, samples) equals a twin's
    that never heard it; instructions set mid-conversation give the reply that reply's own instructions give."""
    engine = voiced(loaded, speech)
    heard, twin = engine.open_session(), engine.open_session()
    for s in (heard, twin):
        speak(s, clip(1.5, seed=8))
        list(s.respond())
    pcm = clip(2.0, seed=10)
    for i in range(0, len(pcm), 8000):
        heard.push_audio(pcm[i : i + 8000], 5.0 + i / 16000)
    heard.discard_audio()
    assert heard.speaking.state.cache.length == twin.speaking.state.cache.length
    heard.set_instructions("Be brief.")
    done = []
    for s, options in ((heard, ResponseOptions()), (twin, ResponseOptions(instructions="Be brief."))):
        speak(s, clip(1.5, seed=9), t0=10.0)
        done.append(list(s.respond(options))[-1])
    a, b = done
    assert isinstance(a, ReplyDone) and isinstance(b, ReplyDone)
    assert a.text == b.text and a.stats["codes"] == b.stats["codes"] and a.stats["speech_s"] == b.stats["speech_s"]
    assert list(heard.history) == list(twin.history)
