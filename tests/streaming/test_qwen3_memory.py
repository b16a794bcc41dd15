"""The omni engine's memory (omni/streaming/engines/omni_memory.py) with a Qwen3-Omni checkpoint (the tiny random one,
tests/model/qwen3_tiny.py), as tests/streaming/test_omni_memory.py checks it for Qwen2.5-Omni: the recalled-memory
slot's logits equal the whole prompt computed at once (`Qwen3Thinker.features_forward`; recalled frames carry no
DeepStack residuals, so the reference gives them zero ones); a later session recalls what an earlier one heard and
saw; the turn with recall still speaks (float32 on CPU, 1e-4 as the engine tests)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.memory import Memory, MemoryStore
from omni.memory.testing import HashingEmbedder
from omni.model.conversation import EncodedPiece, RecalledFeatures
from omni.model.encoders.qwen3_vision import Qwen3VisionOutput
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.lm.summary import SUMMARY_INSTRUCTION, SummaryConfig, summary_body, thinker_summary_steps
from omni.model.qwen3.loader import LoadedQwen3
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.qwen3.speech import Qwen3SpeechModels
from omni.streaming.engine import AudioChunk, ReplyDone
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.engines.omni_memory import (
    AUDIO_TOKENS_PER_BLOCK,
    THINKER_SPACE,
    VIDEO_GRID,
    ThinkerTextKeys,
    pool_piece,
)
from omni.streaming.memory_lane import MemoryHub
from omni.streaming.memory_summary import WorkerSummarizer
from tests.streaming.test_omni_memory import _slot_ids
from tests.streaming.test_qwen3_engine import clip, loaded, speech, voiced  # noqa: F401  (fixtures)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[MemoryHub]:
    embed = HashingEmbedder()
    h = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed), embed)
    yield h
    h.close()


def _frame_output(tokens: torch.Tensor, q: LoadedQwen3) -> Qwen3VisionOutput:
    k = len(q.model.vision_cfg.deepstack_visual_indexes)
    return Qwen3VisionOutput(tokens, [torch.zeros_like(tokens) for _ in range(k)])


def test_a_slot_of_text_audio_and_frames_equals_the_whole_prompt(loaded: LoadedQwen3) -> None:  # noqa: F811
    th, prompt = loaded.model, loaded.prompt
    c = th.lm.cfg.hidden_size
    g = torch.Generator().manual_seed(7)
    question = torch.randn(37, c, generator=g)
    recalled_audio = torch.randn(2 * AUDIO_TOKENS_PER_BLOCK, c, generator=g)
    frame = torch.randn(VIDEO_GRID[0] * VIDEO_GRID[1], c, generator=g)
    grid = (1, 2 * VIDEO_GRID[0], 2 * VIDEO_GRID[1])
    slot = ["Recalled memory:\n[12:00:01, 5 min ago] (no speech)\n", RecalledFeatures("audio", recalled_audio),
            RecalledFeatures("image", frame, grid), "\n[12:03:00, 2 min ago] user: hello\n"]
    system = "You are a helpful assistant."
    s = Qwen3ThinkerSession(th, prompt, system, tokenizer=loaded.tokenizer)
    s.start_user_turn()
    s.add_audio_tokens(question)
    got = s.end_user_turn(slot)
    ids = (prompt.system_turn(system) + prompt.turn_start("user") + prompt.audio(37) + prompt.turn_end()
           + prompt.turn_start("system") + prompt.text(slot[0]) + prompt.audio(recalled_audio.shape[0])
           + prompt.image(grid) + prompt.text(slot[3]) + prompt.turn_end() + prompt.turn_start("assistant"))
    want = th.features_forward(torch.tensor(ids), audio=[question, recalled_audio],
                               images=[(_frame_output(frame, loaded), grid)]).logits
    assert s.prefilled_tokens == len(ids)
    assert want[-1].abs().max() > 1.0
    torch.testing.assert_close(got, want[-1], rtol=1e-4, atol=1e-4)


def test_a_later_session_recalls_what_was_heard_and_seen_and_still_speaks(
    loaded: LoadedQwen3, speech: Qwen3SpeechModels, hub: MemoryHub  # noqa: F811
) -> None:
    engine = voiced(loaded, speech, max_new_tokens=6)
    heard = clip(4.5, seed=11)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(5)]

    first = engine.open_session()
    first.use_memory(hub.open("alice", "s1"))
    assert first.memory is not None
    for i, t in enumerate(np.arange(0.0, 4.5, 0.25)):
        first.push_video(frames[i // 4], float(t))
        first.push_audio(heard[int(t * 16000) : int((t + 0.25) * 16000)], float(t))
    first.end_turn()
    assert isinstance(list(first.respond())[-1], ReplyDone)
    first.memory.lane.close()
    stored = hub.memory.store.load_events("alice")
    assert any(sorted(e.lanes) == ["audio", "video"] for e in stored)

    second = engine.open_session()  # the question: the same sound again
    second.use_memory(hub.open("alice", "s2"))
    for i in range(0, len(heard), 8000):
        second.push_audio(heard[i : i + 8000], 100.0 + i / 16000)
    second.end_turn()
    events = list(second.respond())
    assert second.memory is not None and second._reply is not None
    slot = second.memory.last_slot
    audio = [p for p in slot if isinstance(p, RecalledFeatures) and p.kind == "audio"]
    images = [p for p in slot if isinstance(p, RecalledFeatures) and p.kind == "image"]
    assert audio and images and isinstance(slot[0], str) and slot[0].startswith("Recalled memory")
    # the recalled audio is the first session's pooled 2-s pieces (26 AuT tokens, stored as float16)
    m = loaded.model
    whole = m.encode_audio(m.audio_features(torch.from_numpy(heard), 16000)).float()
    per = m.cfg.rope.ids_per_chunk
    blocks = [pool_piece(EncodedPiece("audio", whole[i : i + per], 0.0, 0)) for i in range(0, whole.shape[0], per)]
    for k in range(0, audio[0].tokens.shape[0], AUDIO_TOKENS_PER_BLOCK):
        got = audio[0].tokens[k : k + AUDIO_TOKENS_PER_BLOCK].numpy()
        assert min(float(np.abs(got - b).max()) for b in blocks) < 1e-2

    # the first reply token's logits equal the whole prompt's: history, question, slot, assistant header
    p = loaded.prompt
    ids = p.system_turn(engine.system_prompt) + p.turn_start("user") + p.audio(whole.shape[0]) + p.turn_end()
    ids += p.turn_start("system")
    feats_audio: list[torch.Tensor] = [whole]
    frames: list[tuple[torch.Tensor, tuple[int, int, int]]] = []
    ids += _slot_ids(p, slot, feats_audio, frames)
    feats_images = [(_frame_output(tokens, loaded), grid) for tokens, grid in frames]
    ids += p.turn_end() + p.turn_start("assistant")
    want = m.features_forward(torch.tensor(ids), audio=feats_audio, images=feats_images).logits[-1]
    got = second._reply.mark.logits
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # the turn with recall still speaks
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.stats["codes"] > 0
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert np.abs(pcm).max() > 0
    second.memory.lane.close()


def test_omni_serve_gives_a_qwen3_memory_the_thinker_summarizer_and_text_space(
    loaded: LoadedQwen3, tmp_path: Path  # noqa: F811
) -> None:
    """As for Qwen2.5-Omni: the Thinker writes the L2 summaries, and text items are keyed in its input space too (the
    unit mean of the text's token embeddings, as a typed question's part)."""
    from omni.app.serve import add_arguments, open_memory

    p = argparse.ArgumentParser()
    add_arguments(p)
    engine = OmniEngine(None, models=(loaded, None), sampling=SamplingConfig(temperature=0.0, max_new_tokens=4))
    hub = open_memory(p.parse_args(["--engine", "omni", "--memory-dir", str(tmp_path / "mem")]), engine)
    assert hub is not None
    try:
        assert isinstance(hub.summarizer, WorkerSummarizer) and hub.memory.consolidator is not None
        keys = hub.memory.text_spaces[THINKER_SPACE]
        assert isinstance(keys, ThinkerTextKeys)
        ids = loaded.prompt.text("hello there")
        with torch.inference_mode():
            want = loaded.model.lm.embed_tokens(torch.tensor(ids)).float().mean(0).numpy()
        np.testing.assert_allclose(keys(["hello there"])[0], want, rtol=1e-6, atol=1e-7)
    finally:
        hub.close()


def test_the_qwen3_thinker_writes_a_summary_in_bounded_steps(loaded: LoadedQwen3) -> None:  # noqa: F811
    """`thinker_summary_steps` on the Qwen3 Thinker: each step is one prefill chunk or one token, and the summary is
    the greedy reply that the whole prompt fed in one forward gives (chunked prefill with plain positions on the MoE
    decoder; float32 on CPU, exact token choices)."""
    cfg = SummaryConfig(max_new_tokens=5, prefill_chunk=16)
    texts = ["user: my sister lives in Lisbon", "user: she is a nurse"]
    gen = thinker_summary_steps(loaded, texts, cfg)
    steps = 0
    try:
        while True:
            next(gen)
            steps += 1
    except StopIteration as stop:
        summary = stop.value
    p = loaded.prompt
    ids = (p.system_turn(SUMMARY_INSTRUCTION) + p.turn_start("user") + p.text(summary_body(texts, cfg))
           + p.turn_end() + p.turn_start("assistant"))
    prefill = -(-len(ids) // cfg.prefill_chunk)
    lm = loaded.model.lm
    greedy = SamplingConfig(temperature=0.0, repetition_penalty=1.1)
    stops = set(loaded.tokenizer.stop_token_ids)
    out: list[int] = []
    with torch.inference_mode():  # the reference: the whole prompt in one forward, then token by token
        state = lm.init_state(CacheConfig(sinks=0, window=len(ids) + 8, chunk=len(ids)))
        sampler = SamplerState.create(lm.cfg.vocab_size)
        x = torch.tensor([ids])
        for _ in range(cfg.max_new_tokens):
            sampler.observe(x)
            logits = lm(state, input_ids=x).logits
            assert logits is not None
            token = int(sample(logits, greedy, sampler)[0])
            if token in stops:
                break
            out.append(token)
            x = torch.tensor([[token]])
    assert summary == loaded.tokenizer.decode(out).strip()
    assert steps == prefill + len(out)  # a step per prefill chunk and per token fed
