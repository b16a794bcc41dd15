"""Incremental detokenisation: turn a stream of token ids into a stream of text deltas.

Byte-level BPE can split one character over several tokens, so each step decodes a short window of
recent tokens and emits only text that is complete (no trailing U+FFFD replacement character).
"""

from __future__ import annotations

from omni.model.lm.tokenizer import TextTokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # tokens up to here have been emitted as text

    def push(self, token: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self.tokens.append(token)
        prefix = self.tokenizer.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            return delta
        return ""

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)
