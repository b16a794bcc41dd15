from __future__ import annotations

import pytest

from model.embedded.phrases import PhraseSplitter, speakable

REPLY = (
    "Sure, the value of pi is about 3.14, and 1,000 is a thousand. Dr. Smith agreed! "
    "1. First item\n2. Second item, with a few more words in it, and then some more words after that. The end"
)


def split(text: str, step: int, **kw: int) -> list[str]:
    s = PhraseSplitter(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.push(text[i : i + step])
    rest = s.flush()
    return out + ([rest] if rest else [])


@pytest.mark.parametrize("step", [1, 2, 5, 17, len(REPLY)])
def test_streamed_split_is_lossless_and_independent_of_delta_sizes(step: int) -> None:
    phrases = split(REPLY, step)
    assert "".join(phrases) == REPLY
    assert phrases == split(REPLY, 1)


def test_boundaries() -> None:
    phrases = split(REPLY, 3, first_max_words=10)
    assert phrases == [
        "Sure, the value of pi is about 3.14, ",  # "Sure," alone is too short to be the first phrase
        "and 1,000 is a thousand. ",  # 3.14 and 1,000 are not split
        "Dr. Smith agreed! ",  # an abbreviation is not a sentence end
        "1. First item\n",  # nor is a list number; a line break is
        "2. Second item, with a few more words in it, ",  # later phrases need 6 words before a comma
        "and then some more words after that. ",
        "The end",
    ]


def test_first_phrase_is_short_so_speech_starts_early() -> None:
    assert split("Yes, I can. Paris is the capital.", 1)[0] == "Yes, I can. "
    assert split("Well, yes, that is true.", 1, first_clause_words=1)[0] == "Well, "


def test_long_run_without_punctuation_is_cut_at_a_word_boundary() -> None:
    text = " ".join(f"word{i}" for i in range(30))
    phrases = split(text, 4, max_words=10)
    assert phrases[0] == " ".join(f"word{i}" for i in range(6)) + " "  # the first phrase: 6 words at most
    assert phrases[1] == " ".join(f"word{i}" for i in range(6, 16)) + " "
    assert "".join(phrases) == text
    assert split("I am afraid I do not have any jokes right now.", 1)[0] == "I am afraid I do not "


def test_nothing_is_emitted_before_the_boundary_is_certain() -> None:
    s = PhraseSplitter()
    assert s.push("It costs 3.") == []  # "3." may be the start of "3.5"
    assert s.push("5 dollars. And") == ["It costs 3.5 dollars. "]
    assert s.flush() == "And"
    assert s.flush() is None


def test_speakable_drops_markdown() -> None:
    assert speakable("**Paris** is the `capital`\n  of # France") == "Paris is the capital of France"


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        PhraseSplitter(clause_words=0)
