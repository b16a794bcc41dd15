"""The omni engine's memory (issue 12) on the tiny random Qwen2.5-Omni checkpoint: what the Thinker heard and saw
goes into L1 as pooled encoder features; a later turn recalls them with the Thinker's own representation of the
question, and they re-enter the prompt as a recalled-memory slot whose logits equal the whole prompt computed at
once by `Thinker.features_logits` (float32 on CPU; streamed and one-shot prefill differ only in summation order,
~1e-6, hence 1e-4, as tests/streaming/test_omni_engine.py); the turn with recall still speaks."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.omni_memory import feed_slot_piecewise
from omni.memory import (
    ConsolidatorConfig,
    Memory,
    MemoryConfig,
    MemoryStore,
    RecallConfig,
    SegmenterConfig,
    concat_summary,
)
from omni.memory.testing import HashingEmbedder
from omni.model.conversation import EncodedPiece, RecalledFeatures, ReplyRecord, SlotPiece
from omni.model.lm.summary import SummaryConfig, thinker_summary_steps
from omni.model.prompt import SPEECH_SYSTEM_PROMPT, PromptBuilder
from omni.model.speech_session import SpeakingSession
from omni.model.thinker_session import ThinkerSession
from omni.streaming.engine import AudioChunk, Image, ReplyDone
from omni.streaming.engines.omni import OmniEngineSession
from omni.streaming.engines.omni_memory import (
    AUDIO_TOKENS_PER_BLOCK,
    THINKER_SPACE,
    VIDEO_GRID,
    ThinkerTextKeys,
    pool_piece,
)
from omni.streaming.memory_lane import MemoryHub, recalled_items
from omni.streaming.memory_summary import WorkerSummarizer
from omni.streaming.worker import DeviceWorker
from tests.streaming.test_omni_engine import Models, clip, make, models  # noqa: F401  (the fixture)

C = 64  # the tiny Thinker's width


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[MemoryHub]:
    embed = HashingEmbedder()
    h = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed), embed)
    yield h
    h.close()


def test_a_slot_of_text_audio_and_frames_equals_the_whole_prompt(models: Models) -> None:  # noqa: F811
    """ThinkerSession.end_user_turn(slot) against Thinker.features_logits on the same ids, features and positions."""
    loaded = models[0]
    th, prompt = loaded.model, loaded.prompt
    g = torch.Generator().manual_seed(7)
    question = torch.randn(37, C, generator=g)
    recalled_audio = torch.randn(2 * AUDIO_TOKENS_PER_BLOCK, C, generator=g)
    frame = torch.randn(VIDEO_GRID[0] * VIDEO_GRID[1], C, generator=g)
    grid = (1, 2 * VIDEO_GRID[0], 2 * VIDEO_GRID[1])
    slot = ["Recalled memory:\n[12:00:01, 5 min ago] (no speech)\n", RecalledFeatures("audio", recalled_audio),
            RecalledFeatures("image", frame, grid), "\n[12:03:00, 2 min ago] user: hello\n"]
    with torch.inference_mode():
        s = ThinkerSession(th, prompt, SPEECH_SYSTEM_PROMPT, tokenizer=loaded.tokenizer)
        s.start_user_turn()
        s.add_audio_tokens(question)
        got = s.end_user_turn(slot)
    ids = (prompt.system_turn(SPEECH_SYSTEM_PROMPT) + prompt.turn_start("user") + prompt.audio(37) + prompt.turn_end()
           + prompt.turn_start("system") + prompt.text(slot[0]) + prompt.audio(recalled_audio.shape[0])
           + prompt.image(grid) + prompt.text(slot[3]) + prompt.turn_end() + prompt.turn_start("assistant"))
    want = th.features_logits(torch.tensor(ids), audio=[question, recalled_audio], images=[(frame, grid)])
    assert s.prefilled_tokens == len(ids)
    torch.testing.assert_close(got, want[-1], rtol=1e-4, atol=1e-4)
    # the slot's ids continue above the history: the largest is the prompt's length less the ids images share
    assert s.cursor.next_id < len(ids) and s.cursor.next_id <= s.state.cache.cfg.window


def test_encoded_pieces_are_the_blocks_and_patches_fed_and_pool_to_fixed_sizes(
    models: Models, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    engine = make(models, max_new_tokens=4)
    s = engine.open_session()
    pieces: list[EncodedPiece] = []  # what the engine hands to memory, as it comes (video segments) or at the end
    monkeypatch.setattr(s, "_remember", lambda t0: pieces.extend(s.speaking.take_encoded()))
    rng = np.random.default_rng(4)
    pcm = clip(4.5, seed=2)
    for t in np.arange(0.0, 4.5, 0.25):
        s.push_video(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), float(t))
        s.push_audio(pcm[int(t * 16000) : int((t + 0.25) * 16000)], float(t))
    during = len(pieces)
    s.end_turn()
    assert 0 < during < len(pieces)  # video segments go to memory as they are fed, the rest at the end
    audio = [p for p in pieces if p.kind == "audio"]
    video = [p for p in pieces if p.kind == "video"]
    th = models[0].model
    n = th.encode_audio(th.audio_features(torch.from_numpy(pcm), 16000)).shape[0]  # the whole clip's tokens
    assert [p.offset_s for p in audio] == [0.0, 2.0, 4.0] and [p.tokens.shape[0] for p in audio] == [50, 50, n - 100]
    assert [p.offset_s for p in video] == [float(k) for k in range(len(video))] and len(video) == 5
    assert all(pool_piece(p).shape == (AUDIO_TOKENS_PER_BLOCK, C) for p in audio)
    assert all(pool_piece(p).shape == (VIDEO_GRID[0] * VIDEO_GRID[1], C) for p in video)
    block = audio[0].tokens.float()
    np.testing.assert_allclose(pool_piece(audio[0])[1], block[10:20].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert s.speaking.take_encoded() == []
    with pytest.raises(ValueError, match="not its 3 x 3 grid"):
        pool_piece(EncodedPiece("video", torch.zeros(4, C), 0.0, 0, (3, 3)))


def test_a_later_session_hears_and_sees_the_recalled_features_at_the_right_positions(
    models: Models, hub: MemoryHub  # noqa: F811
) -> None:
    loaded = models[0]
    engine = make(models, max_new_tokens=12)
    heard = clip(4.5, seed=11)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(5)]

    first = engine.open_session()
    first.use_memory(hub.open("alice", "s1"))
    for i, t in enumerate(np.arange(0.0, 4.5, 0.25)):
        first.push_video(frames[i // 4], float(t))
        first.push_audio(heard[int(t * 16000) : int((t + 0.25) * 16000)], float(t))
    first.end_turn()
    assert isinstance(list(first.respond())[-1], ReplyDone)
    assert first.memory is not None
    first.memory.lane.close()  # the event is written; its features are on disk
    stored = hub.memory.store.load_events("alice")
    assert any(sorted(e.lanes) == ["audio", "video"] for e in stored)  # (random frames: scene changes cut events)

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
    # the recalled audio is the first session's pooled blocks (stored as float16)
    whole = loaded.model.encode_audio(loaded.model.audio_features(torch.from_numpy(heard), 16000)).float()
    blocks = [pool_piece(EncodedPiece("audio", whole[i : i + 50], 0.0, 0)) for i in range(0, whole.shape[0], 50)]
    for k in range(0, audio[0].tokens.shape[0], AUDIO_TOKENS_PER_BLOCK):
        got = audio[0].tokens[k : k + AUDIO_TOKENS_PER_BLOCK].numpy()
        assert min(float(np.abs(got - b).max()) for b in blocks) < 1e-2  # float16 storage, values O(1)

    # the logits of the first reply token equal the whole prompt's: history, question, slot, assistant header
    p = loaded.prompt
    ids = p.system_turn(engine.system_prompt) + p.turn_start("user") + p.audio(whole.shape[0]) + p.turn_end()
    ids += p.turn_start("system")
    feats_audio: list[torch.Tensor] = [whole]
    feats_images: list[tuple[torch.Tensor, tuple[int, int, int]]] = []
    ids += _slot_ids(p, slot, feats_audio, feats_images)
    ids += p.turn_end() + p.turn_start("assistant")
    want = loaded.model.features_logits(torch.tensor(ids), audio=feats_audio, images=feats_images)[-1]
    got = second._reply.mark.logits
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # the turn with recall still speaks, and the runtime gets the recall for omni.memory.recalled
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.stats["codes"] > 0
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert np.abs(pcm).max() > 0
    recall = second.memory.lane.take_recalled()
    assert recall is not None and recall.items
    items = recalled_items(recall)
    assert any(it.get("frames", {}).get("audio", 0) >= 1 for it in items)
    assert {it["t_start"] for it in items} <= {e.t_start for e in stored} | {n.t_first for n in
                                                                            hub.memory.store.load_notes("alice")}
    fed = sum(len(p.text(x)) if isinstance(x, str) else x.tokens.shape[0] + 2 for x in slot)
    assert fed <= engine.memory_budget + 2 * len(slot)  # bounded: bos/eos around each stretch come on top
    second.memory.lane.close()


def test_without_memory_the_turn_is_unchanged(models: Models, hub: MemoryHub) -> None:  # noqa: F811
    """A memory with nothing relevant in it (a new user) leaves the prompt exactly as without memory."""
    engine = make(models, max_new_tokens=6)
    pcm = clip(2.5, seed=5)
    plain, remembering = engine.open_session(), engine.open_session()
    remembering.use_memory(hub.open("bob", "s1"))
    for s in (plain, remembering):
        s.push_audio(pcm, 0.0)
        s.end_turn()
    a, b = list(plain.respond())[-1], list(remembering.respond())[-1]
    assert isinstance(a, ReplyDone) and isinstance(b, ReplyDone) and a.text == b.text
    assert plain.speaking.state.cache.length == remembering.speaking.state.cache.length
    assert remembering.memory is not None and remembering.memory.last_slot == []
    remembering.memory.lane.close()


@pytest.mark.parametrize("cut", ["live", "after"])
def test_the_omni_reply_is_remembered_as_heard(models: Models, hub: MemoryHub, cut: str) -> None:  # noqa: F811
    """Barge-in during the reply, or a client's truncate once it was over: memory keeps the heard text."""
    engine = make(models, max_new_tokens=12)
    s = engine.open_session()
    s.use_memory(hub.open("carol", "s1"))
    s.push_audio(clip(1.0, seed=8), 0.0)
    s.end_turn()
    it = s.respond()
    if cut == "live":
        text = ""
        for ev in it:
            if isinstance(ev, AudioChunk) and ev.text:
                text += ev.text
                break
        it.close()  # type: ignore[attr-defined]
    else:
        done = list(it)[-1]
        assert isinstance(done, ReplyDone) and len(done.text) > 3
        text = done.text[:3]
    s.interrupt(text)
    assert s.memory is not None
    s.memory.lane.close()
    said = [u.text for e in hub.memory.store.load_events("carol") for u in e.utterances if u.role == "assistant"]
    assert said == [text.strip()] and text.strip()


def _slot_ids(p: PromptBuilder, slot: list[SlotPiece], audio: list[torch.Tensor],
              images: list[tuple[torch.Tensor, tuple[int, int, int]]]) -> list[int]:
    """The ids of a recalled-memory slot's pieces; its features are appended to `audio` and `images` in order."""
    ids: list[int] = []
    for piece in slot:
        if isinstance(piece, str):
            ids += p.text(piece)
        elif piece.kind == "audio":
            ids += p.audio(piece.tokens.shape[0])
            audio.append(piece.tokens)
        else:
            ids += p.image(piece.grid)
            images.append((piece.tokens, piece.grid))
    return ids


def test_a_shown_image_is_remembered_and_recalled_by_showing_it_again(
    models: Models, hub: MemoryHub  # noqa: F811
) -> None:
    """push_media(Image) goes to L1 as a pooled frame; showing the same image in a later session recalls it (the
    image pushed into the turn is part of the question) at the positions of the whole prompt."""
    loaded = models[0]
    th, p = loaded.model, loaded.prompt
    engine = make(models, max_new_tokens=6)
    rgb = np.random.default_rng(21).integers(0, 255, (84, 112, 3), dtype=np.uint8)
    patches, grid = th.image_input(torch.from_numpy(rgb), loaded.vision_preprocess)
    tokens = th.encode_vision(patches, grid).float()
    merge = engine.vision_cfg.spatial_merge_size

    first = engine.open_session()
    first.use_memory(hub.open("dana", "s1"))
    first.push_media(Image(rgb))
    assert isinstance(list(first.respond())[-1], ReplyDone)
    assert first.memory is not None
    first.memory.lane.close()
    seen = [e for e in hub.memory.store.load_events("dana") if e.lanes]  # (the reply's event has no features)
    assert [sorted(e.lanes) for e in seen] == [["video"]]
    payload = hub.memory.store.load_payload("dana", seen[0].id, "video")
    want = pool_piece(EncodedPiece("video", tokens, 0.0, 0, (grid[1] // merge, grid[2] // merge)))
    assert payload.tokens.shape == (1, VIDEO_GRID[0] * VIDEO_GRID[1], C)
    np.testing.assert_allclose(payload.tokens[0].astype(np.float32), want, rtol=1e-2, atol=1e-2)  # float16 store

    second = engine.open_session()
    second.use_memory(hub.open("dana", "s2"))
    second.push_media(Image(rgb))
    list(second.respond())
    assert second.memory is not None and second._reply is not None
    slot = second.memory.last_slot
    frames = [x for x in slot if isinstance(x, RecalledFeatures)]
    assert [f.kind for f in frames] == ["image"] and frames[0].grid == (1, VIDEO_GRID[0] * merge, VIDEO_GRID[1] * merge)
    np.testing.assert_allclose(frames[0].tokens.numpy(), want, rtol=1e-2, atol=1e-2)

    audio: list[torch.Tensor] = []
    images: list[tuple[torch.Tensor, tuple[int, int, int]]] = [(tokens, grid)]
    ids = p.system_turn(engine.system_prompt) + p.turn_start("user") + p.image(grid) + p.turn_end()
    ids += p.turn_start("system") + _slot_ids(p, slot, audio, images) + p.turn_end() + p.turn_start("assistant")
    want_logits = th.features_logits(torch.tensor(ids), audio=audio, images=images)[-1]
    got = second._reply.mark.logits
    assert got is not None
    torch.testing.assert_close(got, want_logits, rtol=1e-4, atol=1e-4)
    second.memory.lane.close()


def test_a_spoken_question_reaches_a_typed_fact_through_the_thinker_space(
    models: Models, tmp_path: Path  # noqa: F811
) -> None:
    """Gap of a spoken question (no transcript): text items also hold a key in the Thinker's input space (the mean of
    their token embeddings), compared with the question's vector (the mean of its audio encoder tokens). Random
    weights give no meaningful similarity, so the floor is opened (min_space_score -1) and the test checks the
    mechanism: the key stored is the Thinker's, the score is the cosine in that one space, and the recalled fact
    enters the slot at the positions of the whole prompt."""
    loaded = models[0]
    th, p = loaded.model, loaded.prompt
    keys = ThinkerTextKeys(loaded)
    config = MemoryConfig(recall=RecallConfig(min_space_score=-1.0))
    embed = HashingEmbedder()
    hub = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed, config=config,
                           text_spaces={THINKER_SPACE: keys}), embed)
    engine = make(models, max_new_tokens=4)
    fact = "my locker code is 4719"
    try:
        first = engine.open_session()
        first.use_memory(hub.open("erin", "s1"))
        first.push_text(fact)
        list(first.respond())
        assert first.memory is not None
        first.memory.lane.close()
        index = hub.memory.user_index("erin")
        note = next(n for n in index.note_items.values() if n.kind == "fact")
        with torch.inference_mode():
            mean = th.lm.embed_tokens(torch.tensor(p.text(fact))).float().mean(0)
        want_key = (mean / mean.norm()).numpy()
        lane = index.notes.lanes["text:" + THINKER_SPACE]
        got_key = lane.keys.view[int(np.flatnonzero(lane.pos.view == index.notes.position(note.id))[0]), 0]
        np.testing.assert_allclose(got_key, want_key, rtol=1e-5, atol=1e-6)

        question = clip(2.5, seed=13)
        second = engine.open_session()
        second.use_memory(hub.open("erin", "s2"))
        second.push_audio(question, 50.0)
        second.end_turn()
        list(second.respond())
        assert second.memory is not None and second._reply is not None
        recall = second.memory.lane.take_recalled()
        assert recall is not None
        item = next(it for it in recall.items if it.level == "L3" and it.item_id == note.id)
        with torch.inference_mode():
            whole = th.encode_audio(th.audio_features(torch.from_numpy(question), 16000)).float()
        q = whole.mean(0) / whole.mean(0).norm()
        assert item.score == pytest.approx(float(q @ torch.from_numpy(want_key)), abs=1e-3)
        slot = second.memory.last_slot
        assert any(isinstance(x, str) and f"fact: {fact}" in x for x in slot)
        audio: list[torch.Tensor] = [whole]
        images: list[tuple[torch.Tensor, tuple[int, int, int]]] = []
        ids = p.system_turn(engine.system_prompt) + p.turn_start("user") + p.audio(whole.shape[0]) + p.turn_end()
        ids += p.turn_start("system") + _slot_ids(p, slot, audio, images) + p.turn_end() + p.turn_start("assistant")
        want = th.features_logits(torch.tensor(ids), audio=audio, images=images)[-1]
        got = second._reply.mark.logits
        assert got is not None
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        second.memory.lane.close()
    finally:
        hub.close()


async def test_the_thinker_writes_l2_summaries_in_idle_steps_that_yield_to_turns(
    models: Models, tmp_path: Path  # noqa: F811
) -> None:
    """The omni engine's L2: its Thinker summarises (text only, omni.model.lm.summary.thinker_summary_steps) every 2
    events, as WorkerSummarizer steps on the device worker; a turn queued during a summary runs right after the
    step in progress (ordering, not timing), and each summary points at its children."""
    loaded = models[0]
    engine = make(models, max_new_tokens=4)
    worker = DeviceWorker()
    worker.start()
    loop = asyncio.get_running_loop()
    log: list[str] = []

    def turn(s: OmniEngineSession, text: str) -> None:
        log.append("turn start")
        s.push_text(text)
        list(s.respond())
        log.append("turn end")

    session: list[OmniEngineSession] = []  # the remembering one, and one without memory for the late turn
    queued = threading.Event()
    late: list[concurrent.futures.Future[None]] = []

    def steps(texts: Sequence[str]) -> Generator[None, None, str]:
        gen = thinker_summary_steps(loaded, texts, SummaryConfig(max_new_tokens=6))
        k = 0
        try:
            while True:
                log.append("step")
                if k == 1 and not queued.is_set():  # a turn arrives while the summary runs
                    queued.set()
                    log.append("queued")
                    job = worker.run(turn, session[1], "the bus is at nine")
                    late.append(asyncio.run_coroutine_threadsafe(job, loop))
                    _until(lambda: worker.pending() == 1)
                next(gen)
                k += 1
                yield
        except StopIteration as stop:
            return str(stop.value)

    summarizer = WorkerSummarizer(steps, idle_s=0.01)
    summarizer.attach(worker, loop)
    config = MemoryConfig(segmenter=SegmenterConfig(min_turn_s=0.0), consolidator=ConsolidatorConfig(every_events=2))
    embed = HashingEmbedder()
    memory = Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed, config=config, summarize=summarizer)
    hub = MemoryHub(memory, embed, summarizer=summarizer)

    def open_() -> None:
        s = engine.open_session()
        s.use_memory(hub.open("finn", "s1"))
        session.extend([s, engine.open_session()])

    try:
        await worker.run(open_)
        for text in ("my sister lives in Lisbon", "she is a nurse", "her birthday is in May"):
            await worker.run(turn, session[0], text)
        assert session[0].memory is not None
        await asyncio.to_thread(session[0].memory.lane.close)
        await asyncio.to_thread(memory.flush, 600.0)
        summaries = memory.store.load_summaries("finn")
    finally:
        await asyncio.to_thread(hub.close)
        worker.stop()
    events = {e.id: e for e in memory.store.load_events("finn")}
    by_id = {s.id: s for s in summaries}
    level1 = [s for s in summaries if s.level == 1]
    assert len(level1) >= 2 and all(s.children for s in summaries)
    assert sorted(c for s in level1 for c in s.children) == sorted(events)  # every event summarised once
    for s in summaries:  # each points at its children, and they back at it
        if s.level == 1:
            assert all(events[c].summary_id == s.id for c in s.children)
            texts = [events[c].transcript() for c in s.children]
        else:  # the session's end merges its level-1 summaries upward
            assert all(by_id[c].parent_id == s.id and by_id[c].level == s.level - 1 for c in s.children)
            texts = [by_id[c].text for c in s.children]
        assert s.text and s.text != concat_summary(texts)  # the Thinker wrote it (random weights: any text)
    assert summarizer.stats.summaries == len(summaries)
    assert len(late) == 1 and late[0].result(0) is None
    # the turn queued during step 1 ran right after it: no summary step between its queueing and its start
    i = log.index("queued")
    assert log[i + 1 : i + 3] == ["turn start", "turn end"]
    assert all(x in ("turn start", "turn end") for x in log[: log.index("step")])  # summaries only when idle


def _until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.002)


def test_the_slot_in_one_forward_equals_the_slot_fed_piece_by_piece(models: Models) -> None:  # noqa: F811
    """ThinkerSession.end_user_turn prefills the whole slot in one forward (SpeakingSession: token embeddings added
    to the Talker's track at text positions only); the Thinker's logits and the spoken reply equal those of the same
    slot fed a piece at a time through the public feeds."""
    engine = make(models, max_new_tokens=8)
    g = torch.Generator().manual_seed(9)
    grid = (1, VIDEO_GRID[0] * 2, VIDEO_GRID[1] * 2)
    slot: list[SlotPiece] = ["Recalled memory:\n[12:00:01, 5 min ago] user: hi\n",
                             RecalledFeatures("audio", torch.randn(10, C, generator=g)),
                             RecalledFeatures("image", torch.randn(16, C, generator=g), grid), "[12:03:00] fact: x\n"]
    replies = []
    for batched in (True, False):
        s = engine.open_session().speaking
        assert isinstance(s, SpeakingSession)
        with torch.inference_mode():
            s.start_user_turn()
            s.add_text("what did I say?")
            if batched:
                logits = s.end_user_turn(slot)
            else:
                feed_slot_piecewise(s, slot)
                assert s.logits is not None
                logits = s.logits
            record = [ev for ev in s.respond(engine.sampling, engine.stop_ids) if isinstance(ev, ReplyRecord)][0]
        replies.append((logits.clone(), record, s.prefilled_tokens, s.talker_state.decoder.cache.length))
    (a, ra, na, ta), (b, rb, nb, tb) = replies
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (ra.token_ids, ra.codes, na, ta) == (rb.token_ids, rb.codes, nb, tb) and ra.codes


def test_omni_serve_gives_the_memory_the_thinker_summarizer_and_text_space(
    models: Models, tmp_path: Path  # noqa: F811
) -> None:
    from omni.app.serve import add_arguments, open_memory

    p = argparse.ArgumentParser()
    add_arguments(p)
    hub = open_memory(p.parse_args(["--engine", "omni", "--memory-dir", str(tmp_path / "mem")]), make(models))
    assert hub is not None
    try:
        assert isinstance(hub.summarizer, WorkerSummarizer) and hub.memory.consolidator is not None
        keys = hub.memory.text_spaces[THINKER_SPACE]
        assert isinstance(keys, ThinkerTextKeys) and keys(["hello there"]).shape == (1, C)
    finally:
        hub.close()
