"""Recalled memory rendered inside the user's turn (`ChatSession.stream_reply(..., recalled=...)`): the message
keeps the user's words, the prompt carries the slot between the user header and the words, the cache holds it
(later turns feed only what is new, as a session given that rendered history would), and a reply's own
instructions stay a system message before the turn."""

from __future__ import annotations

import pytest

from omni.model.lm.chat_session import RECALLED, ChatSession, rendered
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm

SYSTEM = "You are brief."
SLOT = "What the user told you earlier (use it to answer):\n[2026-12-02 18:04, 24 h ago] fact: my locker code is 4719"
QUESTION = "What is my locker code?"
# no repetition penalty: the slot's tokens are left out of its count, which a session given the slot as the user's
# own words would not do; greedy decoding alone makes the two comparable token for token
SAMPLING = SamplingConfig(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def lm() -> LoadedLM:
    return load_lm()


def test_the_slot_is_in_the_user_turn_and_the_message_keeps_the_words(lm: LoadedLM) -> None:
    chat = ChatSession(lm, SYSTEM, SAMPLING)
    answer = "".join(chat.stream_reply(QUESTION, "Answer in one word.", recalled=SLOT))
    assert chat.messages[1] == {"role": "system", "content": "Answer in one word."}
    assert chat.messages[2] == {"role": "user", "content": QUESTION, RECALLED: SLOT}
    prompt = lm.tokenizer.render_chat(rendered(chat.messages[:3]), add_generation_prompt=True)
    assert prompt.endswith(f"<|im_start|>system\nAnswer in one word.<|im_end|>\n"
                           f"<|im_start|>user\n{SLOT}\n\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"), prompt
    # the same tokens as a session told the slot as part of the user's message
    told = ChatSession(lm, SYSTEM, SAMPLING)
    told.messages.append({"role": "system", "content": "Answer in one word."})
    assert told.reply(f"{SLOT}\n\n{QUESTION}") == answer
    assert told.last.prompt_tokens == chat.last.prompt_tokens
    # the next turn feeds only itself: the cache holds the slot where the rendered history has it
    assert chat.reply("Thanks. And yours?") == told.reply("Thanks. And yours?")
    assert chat.last.prompt_tokens == told.last.prompt_tokens < 20
    assert [m["content"] for m in chat.messages if m["role"] == "user"] == [QUESTION, "Thanks. And yours?"]


def test_a_prepared_turn_with_its_slot_is_used_as_it_is(lm: LoadedLM) -> None:
    plain = ChatSession(lm, SYSTEM, SAMPLING)
    want = "".join(plain.stream_reply(QUESTION, recalled=SLOT))
    ahead = ChatSession(lm, SYSTEM, SAMPLING)
    history = ahead.prefill_history()
    turn = ahead.prefill_turn(QUESTION, recalled=SLOT)
    assert "".join(ahead.stream_reply(QUESTION, recalled=SLOT)) == want
    assert ahead.last.prompt_tokens == plain.last.prompt_tokens - history - turn <= 4  # "<|im_start|>assistant\n"


def test_messages_with_slots_leave_the_window_without_a_reprefill(lm: LoadedLM, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """As tests/streaming/test_chat_window_memory.py, every turn with a slot: dropping the messages that left the
    window re-bases the fed text, slots included, so the next turn still feeds only what is new."""
    cache = CacheConfig(sinks=4, window=200, chunk=64)
    bounded = ChatSession(lm, SYSTEM, SAMPLING, cache)
    unbounded = ChatSession(lm, SYSTEM, SAMPLING, cache)
    monkeypatch.setattr(unbounded, "_drop_gone", lambda: None)
    for i, word in enumerate(("cat", "tree", "moon", "rain", "book", "star", "fish", "hill")):
        q = f"Give me one word that rhymes with {word}."
        slot = f"[turn {i}] fact: my favourite word is {word}"
        a = "".join(bounded.stream_reply(q, recalled=slot))
        assert a == "".join(unbounded.stream_reply(q, recalled=slot))
        assert bounded.last.prompt_tokens == unbounded.last.prompt_tokens < 60
    assert bounded.state.cache.length > 2 * 200 and len(bounded.messages) < len(unbounded.messages)
    assert all(m[RECALLED].startswith("[turn ") for m in bounded.messages if m["role"] == "user")
