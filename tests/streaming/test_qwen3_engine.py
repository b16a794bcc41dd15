"""The omni engine on a tiny random Qwen3-Omni checkpoint (tests/model/qwen3_tiny.py): the same engine as
Qwen2.5-Omni's (streaming/engines/omni.py) with a `Qwen3ThinkerSession` per conversation, text replies only.

"The engine's caches hold the conversation" is checked by behaviour: the reply (greedy) and the first-reply
logits equal those of a `Qwen3ThinkerSession` fed the same input through the model API alone (1e-4: streamed
and one-shot prefill differ only in summation order in float32), also after a barge-in, where the reference is
fed only the played text as the assistant's turn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from app.serve import make_engine
from model.lm.sampling import SamplingConfig
from model.loaders.family import QWEN3_OMNI_MOE
from model.qwen3.loader import LoadedQwen3, load_qwen3
from model.qwen3.session import Qwen3ThinkerSession
from model.thinker_session import ReplyRecord
from streaming.engine import AudioChunk, Image, ReplyDone, ResponseOptions, TextDelta, VideoClip
from streaming.engines.omni import OmniEngine, OmniEngineSession
from streaming.vad import SileroVad
from streaming.worker import DeviceWorker
from tests.streaming.harness import Harness
from tests.streaming.test_text_turns import typed_turn


@pytest.fixture(scope="module")
def loaded(qwen3_tiny_dir: Path) -> LoadedQwen3:
    return load_qwen3(qwen3_tiny_dir)


def make(loaded: LoadedQwen3, max_new_tokens: int = 24) -> OmniEngine:
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    return OmniEngine(None, models=(loaded, None), sampling=sampling)


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def speak(s: OmniEngineSession, pcm: np.ndarray, piece: float = 0.5, t0: float = 0.0) -> None:
    n = int(piece * 16000)
    for i in range(0, len(pcm), n):
        s.push_audio(pcm[i : i + n], t0 + i / 16000)
    s.end_turn()


def reference(loaded: LoadedQwen3, engine: OmniEngine) -> Qwen3ThinkerSession:
    """A fresh model-API session with the engine's system prompt and cache."""
    return Qwen3ThinkerSession(loaded.model, loaded.prompt, engine.system_prompt, engine.cache, loaded.tokenizer)


def ref_audio_turn(ref: Qwen3ThinkerSession, pcm: np.ndarray) -> None:
    ref.start_user_turn()
    ref.add_audio(torch.from_numpy(pcm))
    ref.end_user_turn()


def test_the_engine_is_text_only_and_says_so(loaded: LoadedQwen3, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streaming.engines.omni"):
        engine = make(loaded)
    assert engine.family == QWEN3_OMNI_MOE and engine.speech is None
    assert "speech output is not yet available for Qwen3-Omni" in caplog.text
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


def test_unsupported_qwen3_inputs_are_refused_or_logged(loaded: LoadedQwen3, caplog: pytest.LogCaptureFixture) -> None:
    s = make(loaded, max_new_tokens=4).open_session()
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="soundtrack is not yet supported for Qwen3-Omni"):
        s.push_media(VideoClip([rgb] * 4, 2.0, audio=clip(2.0)))
    s.push_video(rgb, 0.0)  # a camera frame, then speech: audio only, logged
    with caplog.at_level(logging.WARNING, logger="streaming.engines.omni"):
        speak(s, clip(1.0))
    assert "camera frames during spoken turns are not yet fed to Qwen3-Omni" in caplog.text
    assert list(s.history)[-1] == ("user", "[audio 1.0 s]")
    assert isinstance(list(s.respond())[-1], ReplyDone)


async def test_a_spoken_turn_through_the_session_runtime(
    loaded: LoadedQwen3, worker: DeviceWorker, media: DeviceWorker, vad: SileroVad, speech16k: np.ndarray
) -> None:
    engine = make(loaded, max_new_tokens=12)
    h = Harness(engine, worker, vad, media=media)
    await h.start()
    try:
        await h.feed(speech16k, realtime=False)
        await h.silence(1.0, realtime=False)
        done = await h.wait_for("response.done")
        s = h.session.engine_session
        assert isinstance(s, OmniEngineSession)
        history = list(s.history)
    finally:
        await h.close()
    text = "".join(e["delta"] for e in h.events if e["type"] == "response.output_text.delta")
    assert done["response"]["status"] == "completed" and text
    assert done["response"]["output"][0]["content"][0]["transcript"] == text
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
    from app.cli import build_parser

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", str(qwen3_tiny_dir)])
    engine = make_engine(args.engine, model=args.model, voice=args.voice, device=args.device)
    assert isinstance(engine, OmniEngine) and engine.family == QWEN3_OMNI_MOE
    assert isinstance(engine.thinker, LoadedQwen3) and engine.speech is None
    assert (engine.input_sample_rate, engine.output_sample_rate) == (16000, 24000)
    with pytest.raises(ValueError, match="--quant is not yet supported for Qwen3-Omni"):
        make_engine("omni", model=str(qwen3_tiny_dir), quant="int8")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    with pytest.raises(ValueError, match="not an Omni checkpoint"):
        make_engine("omni", model=str(tmp_path))
