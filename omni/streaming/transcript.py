"""Live captions of the user's speech as append-only `TranscriptDelta`s (Realtime `input_audio_transcription.delta`
events), for engines whose recogniser re-makes its hypothesis (the embedded engine's Whisper).

The protocol's deltas are appended by the client: each carries only text that follows what was sent
before. A recogniser's partial hypothesis is not append-only: it is re-made from the whole utterance (Whisper
every second of audio), and its last words change ("What is the capital?" -> "What is the capital of
France?"). So a word is sent only once it is stable: the same, with its punctuation, in two consecutive
hypotheses, and it is not the last word of the newer one (a last word may still be cut off or get a comma).
What was sent is never taken back; if a later hypothesis revises a word already sent, nothing more is sent
for that utterance, and the `.completed` event carries the whole final transcript, which the client shows
instead of its deltas (as the protocol says: the final transcript replaces the deltas).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TranscriptDeltas"]


@dataclass
class TranscriptDeltas:
    """One user item's caption: feed each partial hypothesis to `update`; it returns the text to send."""

    sent: list[str] = field(default_factory=list)  # the words sent so far, in order
    _previous: list[str] = field(default_factory=list)  # the last hypothesis, as words

    def update(self, hypothesis: str) -> str:
        """The delta to send for this hypothesis ("" for none): the newly stable words, with the space that
        joins them to what was sent."""
        words = hypothesis.split()
        stable = 0
        for a, b in zip(words[:-1], self._previous, strict=False):  # (the newest last word is never stable)
            if a != b:
                break
            stable += 1
        self._previous = words
        n = len(self.sent)
        if stable <= n or words[:n] != self.sent:  # nothing new, or an already sent word was revised
            return ""
        new = words[n:stable]
        self.sent += new
        return (" " if n else "") + " ".join(new)

    def reset(self) -> None:
        """The utterance's item ended (its final transcript was sent): the next caption starts afresh."""
        self.sent, self._previous = [], []
