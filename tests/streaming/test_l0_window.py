"""L0 on the engines' own caches (issue 12): the session's KV cache tells memory before its window's start moves
(`KVCache.watch`), and exactly the items that start below the new start leave L0 then, their text written to L3
first; nothing held is below the window, nothing left early, and every item the session fed was held. On the
embedded engine (the packaged LM, a 96-token window) and the omni engine (the tiny random Qwen2.5-Omni
checkpoint, audio and typed turns through a 96-token window)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from omni.memory import Memory, MemoryStore, WindowItem
from omni.memory.testing import HashingEmbedder
from omni.model.lm.kv_cache import KVCache
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.streaming.engines.embedded import EmbeddedEngine
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.memory_lane import MemoryHub, MemoryLane
from tests.streaming.test_omni_engine import Models, clip, models, speak  # noqa: F401  (the fixture)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[MemoryHub]:
    embed = HashingEmbedder()
    h = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed), embed)
    yield h
    h.close()


@dataclass
class Slides:
    """Every slide the cache told the lane: (edge, cache length then, items that left, items held after)."""

    cache: KVCache
    window: int
    log: list[tuple[int, int, list[WindowItem], list[WindowItem]]] = field(default_factory=list)
    tracked: list[WindowItem] = field(default_factory=list)


def spy(lane: MemoryLane, cache: KVCache) -> Slides:
    slides = Slides(cache, cache.cfg.window)
    handle = lane.handle
    slide, track = handle.slide, handle.track

    def spy_slide(edge: int) -> list[WindowItem]:
        length = cache.length
        gone = slide(edge)
        slides.log.append((edge, length, gone, handle.window.held))
        return gone

    def spy_track(item: WindowItem) -> None:
        slides.tracked.append(item)
        track(item)

    handle.slide = spy_slide  # type: ignore[method-assign]
    handle.track = spy_track  # type: ignore[method-assign]
    return slides


def check(slides: Slides, hub: MemoryHub, user: str) -> list[WindowItem]:
    """The invariants of the module docstring; returns the items that left."""
    assert slides.log, "the window never slid"
    left: list[WindowItem] = []
    last = 0
    for k, (edge, length, gone, held) in enumerate(slides.log):
        assert edge > last  # told once per move, forwards
        if not (k == 0 and length == edge + slides.window):  # (at the watch's start: where the window is now)
            assert length < edge + slides.window  # told before the cache reached the length that moves it there
        assert all(it.start < edge for it in gone)  # exactly those below the edge leave
        assert all(it.start >= edge for it in held)  # ... and all of them
        left += gone
        last = edge
    hub.memory.flush()
    notes = [n for n in hub.memory.store.load_notes(user) if n.kind == "turn"]
    texts = [f"{it.role}: {it.text}" for it in left if it.kind == "text" and it.text]
    # the text of each that left is in L3: a note each, or counted on the note it repeats (L3 deduplicates)
    assert texts and sum(n.count for n in notes) == len(texts)
    assert {t for t in texts if t.startswith("user: ")} <= {n.text for n in notes}
    return left


def test_the_embedded_window_reports_what_leaves_before_it_goes(hub: MemoryHub) -> None:
    lm: LoadedLM = load_lm()
    sampling = SamplingConfig(temperature=0.0, repetition_penalty=1.1, max_new_tokens=16)
    engine = EmbeddedEngine(lm=lm, speak=False, listen=False, sampling=sampling, window=96)
    s = engine.open_session()
    lane = hub.open("erin", "s1")
    slides = spy(lane, s.chat.state.cache)
    s.use_memory(lane)
    for w in ("cat", "tree", "moon", "rain", "book"):
        s.push_text(f"Give me one word that rhymes with {w}.")
        list(s.respond())
        kept = {m["content"] for m in s.chat.messages}
        written = {it.text for _, _, gone, _ in slides.log for it in gone}
        gone_msgs = [t.text for t in slides.tracked if t.text and t.text not in kept]
        assert set(gone_msgs) <= written  # a message the chat dropped had left L0 (and gone below) first
    assert s.chat.state.cache.length > 2 * 96
    left = check(slides, hub, "erin")
    roles = {it.role for it in left}
    assert roles == {"user", "assistant"}
    tracked = {(it.start, it.role) for it in slides.tracked}
    assert {(it.start, it.role) for it in left} | {(it.start, it.role) for it in lane.held} == tracked
    s.close()
    assert s.chat.state.cache._watcher is None  # the closed session no longer tells the lane
    lane.close()
    assert lane.held == []


@pytest.mark.parametrize("pooled", [0, 2])
def test_the_omni_window_reports_audio_and_text_before_they_go(
    models: Models, hub: MemoryHub, pooled: int  # noqa: F811
) -> None:
    """`pooled` 2: the session's cache is a row of the batched pool (decode steps through BatchedDecoder)."""
    thinker, _ = models
    engine = OmniEngine(None, models=(thinker, None), speak=False, window=96,
                        sampling=SamplingConfig(temperature=0.0, max_new_tokens=8), seed=0, max_sessions=pooled)
    s = engine.open_session()
    assert (type(s.speaking.state.cache) is not KVCache) == bool(pooled)  # a pool row's cache, or its own
    lane = hub.open("finn", "s1")
    slides = spy(lane, s.speaking.state.cache)
    s.use_memory(lane)
    for k in range(4):
        s.push_text(f"note number {k} is about the blue kettle")
        list(s.respond())
        speak(s, clip(1.0, seed=k))
        list(s.respond())
    left = check(slides, hub, "finn")
    kinds = {it.kind for it in left}
    assert kinds == {"text", "audio"}
    assert {it.role for it in left if it.kind == "text"} == {"user", "assistant"}
    assert sorted((it.start, it.kind, it.role) for it in [*left, *lane.held]) == sorted(
        (it.start, it.kind, it.role) for it in slides.tracked)
    s.close()
    assert s.speaking.state.cache._watcher is None
    lane.close()
