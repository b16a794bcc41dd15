from __future__ import annotations

import pytest

from omni.model.embedded.phrases import PhraseSplitter, speakable

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
    # the first phrase 4 words at most, the next 8 (the limit doubles), then the later phrases' 10
    assert [len(p.split()) for p in phrases] == [4, 8, 10, 8]
    assert phrases[0] == " ".join(f"word{i}" for i in range(4)) + " "
    assert phrases[1] == " ".join(f"word{i}" for i in range(4, 12)) + " "
    assert "".join(phrases) == text
    assert split("I am afraid I do not have any jokes right now.", 1)[0] == "I am afraid I "


def test_limits_ramp_up_from_the_first_phrase_to_the_later_ones() -> None:
    text = " ".join(f"w{i}" for i in range(80))
    assert [len(p.split()) for p in split(text, 3)] == [4, 8, 16, 24, 24, 4]
    # clause breaks: 2 words before a comma end the first phrase, 4 the second, 6 (clause_words) from the third on
    clauses = "a b, c d, e f g h, i j k l, m n o p q r, s t, u v w x y z, end"
    assert split(clauses, 2) == ["a b, ", "c d, e f g h, ", "i j k l, m n o p q r, ", "s t, u v w x y z, ", "end"]


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
