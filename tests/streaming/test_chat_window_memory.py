"""A long conversation keeps `ChatSession.messages` as long as the KV window (issue 12): messages whose tokens all
left the window are dropped without changing a reply or re-prefilling the cache, and with memory on, every user
message dropped was written to L3 first (the embedded engine's roll-up runs before each turn)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni.memory import Memory, MemoryStore
from omni.memory.testing import HashingEmbedder
from omni.model.lm.chat_session import ChatSession
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.streaming.engines.embedded import EmbeddedEngine
from omni.streaming.memory_lane import MemoryHub

WINDOW = 160
SAMPLING = SamplingConfig(temperature=0.0, repetition_penalty=1.1, max_new_tokens=16)
QUESTIONS = [f"Give me one word that rhymes with {w}." for w in
             ("cat", "tree", "moon", "rain", "book", "star", "fish", "hill", "cake", "road", "ship", "bell")]


@pytest.fixture(scope="module")
def lm() -> LoadedLM:
    return load_lm()


def test_messages_stay_within_the_window_and_replies_do_not_change(
    lm: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CacheConfig(sinks=4, window=WINDOW, chunk=64)
    bounded = ChatSession(lm, "You are brief.", SAMPLING, cache)
    unbounded = ChatSession(lm, "You are brief.", SAMPLING, cache)
    monkeypatch.setattr(unbounded, "_drop_gone", lambda: None)  # the same session, keeping every message
    for q in QUESTIONS:
        a, b = bounded.reply(q), unbounded.reply(q)
        assert a == b  # the cache holds the same tokens: dropping only forgets text that left it
        assert bounded.last.prompt_tokens == unbounded.last.prompt_tokens  # no re-prefill of the whole history
        assert bounded.state.cache.length == unbounded.state.cache.length
        # the oldest message kept still has tokens in the window (its end is past the window's start)
        assert bounded._ends[1] > bounded.state.cache.length - WINDOW
    assert bounded.state.cache.length > 2 * WINDOW  # the window slid well past the first turns
    assert len(unbounded.messages) == 1 + 2 * len(QUESTIONS) and len(bounded.messages) < len(unbounded.messages)
    assert bounded.messages[0] == {"role": "system", "content": "You are brief."}
    # what is kept is the newest part of the history, and it fits the window
    assert bounded.messages[1:] == unbounded.messages[-(len(bounded.messages) - 1) :]
    encode = lm.tokenizer.encode
    assert sum(len(encode(m["content"])) for m in bounded.messages[2:]) < WINDOW
    # a barge-in after a drop still rolls back to the reply's start and continues the same way
    bounded.truncate_last_reply("Well")
    unbounded.truncate_last_reply("Well")
    assert bounded.reply("One more, with dog.") == unbounded.reply("One more, with dog.")
    assert bounded.last.prompt_tokens == unbounded.last.prompt_tokens


def test_a_dropped_message_was_rolled_up_to_l3_first(lm: LoadedLM, tmp_path: Path) -> None:
    embed = HashingEmbedder()
    hub = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed), embed)
    engine = EmbeddedEngine(lm=lm, speak=False, listen=False, sampling=SAMPLING, window=WINDOW)
    s = engine.open_session()
    s.use_memory(hub.open("dana", "s1"))
    said: list[str] = []
    for q in QUESTIONS[:8]:
        s.push_text(q)
        list(s.respond())
        said.append(q)
        hub.memory.flush()
        kept = {m["content"] for m in s.chat.messages}
        notes = {n.text for n in hub.memory.store.load_notes("dana") if n.kind == "turn"}
        for text in said:
            if text not in kept:
                assert f"user: {text}" in notes  # written below before it left the history
    assert len(s.chat.messages) < 1 + 2 * len(said)  # some were dropped
    s.close()
    assert s.memory is not None
    s.memory.close()
    hub.close()
