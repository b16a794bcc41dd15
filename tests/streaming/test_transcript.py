"""Transcription deltas are append-only: what a client that appends them shows is always a prefix of the
latest hypothesis, and (when the recogniser did not revise a sent word) of the final transcript."""

from __future__ import annotations

from omni.streaming.transcript import TranscriptDeltas

# Whisper's partial hypotheses of one utterance as it grows (one per second of audio), as seen in our runs:
# the last word changes, punctuation moves, and a whole word is revised once ("capitol" -> "capital").
GROWING = [
    "What",
    "What is the",
    "What is the capital?",
    "What is the capital of",
    "What is the capital of France?",
    "What is the capital of France? And",
]
FINAL = "What is the capital of France? And why?"


def appended(hypotheses: list[str]) -> list[str]:
    """What an appending client shows after each hypothesis."""
    t = TranscriptDeltas()
    shown, out = "", []
    for h in hypotheses:
        shown += t.update(h)
        out.append(shown)
    return out


def test_deltas_carry_only_new_stable_words() -> None:
    shown = appended(GROWING)
    assert shown == [
        "",  # a lone last word is never stable
        "What",  # in both; the newer hypothesis's "is" was not in the one before
        "What is the",
        "What is the",  # "capital?" became "capital": not stable
        "What is the capital of",
        "What is the capital of France?",
    ]
    for i, s in enumerate(shown):
        assert GROWING[i].startswith(s) and FINAL.startswith(s)


def test_a_revised_word_stops_the_deltas_and_the_final_replaces_them() -> None:
    t = TranscriptDeltas()
    assert t.update("What is the capitol") == ""
    assert t.update("What is the capitol of") == "What is the capitol"
    # the recogniser changed its mind about a word already sent: nothing can be taken back, so nothing is
    # appended on top of it (the .completed event carries the corrected whole)
    assert t.update("What is the capital of France") == ""
    assert t.update("What is the capital of France?") == ""
    t.reset()  # the next utterance starts afresh
    assert t.update("Hello there") == "" and t.update("Hello there you") == "Hello there"


def test_no_delta_repeats_text_already_sent() -> None:
    t = TranscriptDeltas()
    deltas = [t.update(h) for h in ["a b c", "a b c d", "a b c d", "a b c d e f", "a b"]]
    assert deltas == ["", "a b c", "", " d", ""]
