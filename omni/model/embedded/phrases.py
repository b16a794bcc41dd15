"""Splitting streamed reply text into phrases that can be spoken while the rest is still being generated.

A phrase ends at a sentence end (. ! ? or a line break), or at a clause break (, ; : or a dash) once it has
enough words, or at a word boundary once it is long. The first phrase is kept short so speech starts early
(2 words before a comma, cut after 4 words without one), and the limits double with each phrase (4, 8, 16
words; clause breaks after 2, 4, 6) up to those of the rest (6 words before a comma, cut after 24) so the
synthesiser's intonation has whole clauses. Why a ramp: the voice is synthesised a phrase at a time, at a
cost about proportional to the phrase's audio (Piper joe on a loaded 2-core machine, load ~14: 2 words
215 ms for 0.52 s of speech, 4 words 523 ms / 1.07 s, 6 words 710 ms / 1.6 s, 12 words 1,294 ms / 3.2 s),
so the first phrase's words are what end of speech -> first audio waits for, and each next phrase, made
while the one before plays, must not take longer than that one lasts: twice the words at a real-time factor
under 0.5 (0.15-0.4 measured) does not.
A boundary is only decided once the character after the punctuation is seen, so "3.14", "1,000" and
"e.g." never split; a lone list number ("1. ") and common abbreviations ("Dr. ", "Mr. ") do not end a phrase.

The phrases are slices of the stream: joined, they give back the text exactly, so a runtime can tell which
part of the reply a piece of audio speaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PhraseSplitter", "speakable"]

_SENTENCE_END = ".!?"
_CLAUSE_BREAK = ",;:"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e a.m p.m no approx dept est fig inc ltd mt".split()
)
_MARKUP = re.compile(r"[*_#`~|<>\[\]{}]+")  # markdown an LM may write; spoken as nothing
_SPACES = re.compile(r"\s+")


def speakable(text: str) -> str:
    """The phrase as the synthesiser should read it: markdown symbols dropped, whitespace collapsed."""
    return _SPACES.sub(" ", _MARKUP.sub(" ", text)).strip()


@dataclass
class PhraseSplitter:
    """Feed text deltas with `push`; get back the phrases completed so far. `flush` ends the stream."""

    first_clause_words: int = 2  # words before a clause break may end the first phrase
    clause_words: int = 6  # ... and every later phrase, once the ramp (doubling per phrase) reaches it
    first_max_words: int = 4  # the first phrase with no punctuation is cut at a word boundary after this many
    max_words: int = 24  # ... and every later phrase, once the ramp reaches it

    def __post_init__(self) -> None:
        if not 1 <= self.first_clause_words <= self.first_max_words or not 1 <= self.clause_words <= self.max_words:
            raise ValueError("clause word counts must be between 1 and the phrase's max words")
        self._buf = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        phrases: list[str] = []
        while (cut := self._boundary()) is not None:
            phrases.append(self._buf[:cut])
            self._buf = self._buf[cut:]
            self._emitted += 1
        return phrases

    def flush(self) -> str | None:
        """The rest of the text as a last phrase (None if nothing is left); the splitter starts over."""
        rest, self._buf, self._emitted = self._buf, "", 0
        return rest or None

    def _boundary(self) -> int | None:
        """Index just after the first complete phrase in the buffer, or None if there is none yet."""
        buf = self._buf
        if self._emitted == 0:
            need, longest = self.first_clause_words, self.first_max_words
        else:  # the limits double with each phrase up to the later phrases' (module docstring)
            ramp = 2 ** min(self._emitted, 8)
            need = min(self.clause_words, self.first_clause_words * ramp)
            longest = min(self.max_words, max(self.first_max_words * ramp, need))
        words = 0
        in_word = False
        for i, ch in enumerate(buf):
            if ch.isspace():
                if in_word:
                    words += 1
                in_word = False
                if ch == "\n" and buf[:i].strip():
                    return i + 1
                if words >= longest:
                    return i + 1
                continue
            in_word = True
            if i + 1 >= len(buf):
                return None  # the next character decides
            nxt = buf[i + 1]
            if not nxt.isspace():
                continue
            if ch in _SENTENCE_END and not self._continues(buf[: i + 1]):
                return i + 2
            if (ch in _CLAUSE_BREAK or ch in "\u2014\u2013") and words + 1 >= need:
                return i + 2
        return None

    @staticmethod
    def _continues(text: str) -> bool:
        """Whether a "." at the end of `text` is inside the sentence (an abbreviation or a list number)."""
        if not text.endswith("."):
            return False
        last = text.split()[-1] if text.split() else ""
        word = last.rstrip(".").lower()
        if word in _ABBREVIATIONS:
            return True
        return word.isdigit() and len(text.split()) == 1  # "1. " opening a list item
