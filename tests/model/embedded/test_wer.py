"""The word error rate scorer: what normalisation forgives (case, punctuation, numbers, spelling variants)
and what it still counts (every real word error)."""

from __future__ import annotations

from omni.model.embedded.wer import WordErrors, corpus_wer, normalize_words, word_errors


def test_case_punctuation_and_markup_are_not_errors() -> None:
    assert normalize_words("What's the time, Peter?") == ["what's", "the", "time", "peter"]
    assert normalize_words("the(2) <sil> time [noise]") == ["the", "time"]
    assert word_errors("Turn off the lights.", "turn off the lights").errors == 0


def test_numbers_are_compared_as_words() -> None:
    assert normalize_words("Set a timer for 12 minutes") == "set a timer for twelve minutes".split()
    assert normalize_words("in 1999, the 3rd of 42") == "in nineteen ninety nine the third of forty two".split()
    assert normalize_words("twenty-one") == ["twenty", "one"]


def test_british_and_american_spellings_are_the_same_word() -> None:
    british = "My favourite colour is grey; the tyre centre realised we travelled 5 kilometres."
    american = "My favorite color is gray; the tire center realized we traveled 5 kilometers."
    assert normalize_words(british) == normalize_words(american)
    # Words ending like British spellings but American too are left alone.
    assert normalize_words("our four hours on tour") == ["our", "four", "hours", "on", "tour"]


def test_real_errors_still_count() -> None:
    assert word_errors("Is coffee bad for your heart?", "Is coffee mad for your heart?") == WordErrors(1, 0, 0, 6)
    assert word_errors("How do volcanoes form?", "How do you volcano form?") == WordErrors(1, 0, 1, 4)
    assert word_errors("What is the capital of France?", "What is capital France") == WordErrors(0, 2, 0, 6)
    assert corpus_wer([("a b", "a b"), ("c d", "c e")]) == 0.25
