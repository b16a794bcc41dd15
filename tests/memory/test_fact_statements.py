"""Which user utterances the session keeps as L3 facts (`omni.memory.session.is_fact_statement`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni.memory.session import Memory, is_fact_statement
from omni.memory.store import MemoryStore
from omni.memory.testing import HashingEmbedder

FACTS = [
    "my locker code is 4719",
    "I'm allergic to nuts",
    "I was born in Lisbon.",
    "I grew up in Porto.",
    "I've got two cats.",
    "I had a knee operation in 2019.",
    "We live in Winnipeg.",
    "We're vegetarians.",
    "We were married in June.",
    "Our wifi password is tangerine.",
    "I come from Norway.",
    "I’m from Ghana.",  # a typographic apostrophe, as some transcribers write it
    "call me Sam",
]
NOT_FACTS = [
    "Tell me a fun fact about cats.",
    "How do I boil an egg?",
    "Where was I born?",
    "What is my locker code?",
    "Thanks, that was helpful.",
    "The weather is nice.",
    "I wonder.",  # a first-person word alone is not enough: no form of be/have, no lives/works/comes from
]


@pytest.mark.parametrize("text", FACTS)
def test_first_person_statements_are_facts(text: str) -> None:
    assert is_fact_statement(text)


@pytest.mark.parametrize("text", NOT_FACTS)
def test_questions_and_other_lines_are_not_facts(text: str) -> None:
    assert not is_fact_statement(text)


def test_a_past_tense_statement_is_recalled_as_a_fact_before_the_session_closes(tmp_path: Path) -> None:
    """Only facts are written while the session is open (its dialogue rolls into L3 at close): "I was born in
    Lisbon" is recallable at once, a remark that is no fact is not."""
    memory = Memory(MemoryStore.open(str(tmp_path / "store")), HashingEmbedder())
    try:
        mem = memory.open_session("ann", "s1", started_at=1_800_000_000.0)
        mem.add_utterance("user", "I was born in Lisbon.", 1.0, 2.0)
        mem.add_utterance("user", "The weather is nice.", 3.0, 4.0)
        memory.flush()
        text = mem.recall(memory.embed(["where was I born"])[0], "", 500).text
        assert "fact: I was born in Lisbon." in text
        assert "weather" not in text
    finally:
        memory.close()
