"""A semantic end of turn: how likely a chat LM thinks the user's message is finished where the words stop.

The user's words are fed (after the history, in the chat template) up to their last word, without the final
punctuation, and the LM's next-token distribution is read there: the probability of the tokens that would
finish the message (the template's end-of-turn marker and the model's other stop tokens, "?" and ".") is the
probability that the message is finished. "What is the capital of France" scores high, "What is the capital
of" low (benchmarks/end_of_turn.py measures how well this separates finished questions from their prefixes).
`ChatSession.prefill_turn(..., score_end=True)` computes it inside the prefill the turn gets anyway: the same
forward call, and the LM head applied to one more position.
"""

from __future__ import annotations

import torch

from omni.model.lm.tokenizer import TextTokenizer

__all__ = ["end_probability", "end_token_ids", "open_words"]

_FINISHING_MARKS = "?.!"


def end_token_ids(tokenizer: TextTokenizer) -> list[int]:
    """Tokens that would finish a user's message: the stop tokens (ChatML's <|im_end|>, Llama 3's <|eot_id|>,
    the eos) and the first token of "?" and "." (the message's last punctuation, then the end marker)."""
    ids = set(tokenizer.stop_token_ids)
    for mark in "?.":
        enc = tokenizer.encode(mark)
        if enc:
            ids.add(enc[0])
    return sorted(ids)


def open_words(text: str) -> str:
    """`text` without its final punctuation and spaces: the words the LM is asked to continue or end."""
    return text.rstrip().rstrip(_FINISHING_MARKS + " ")


def end_probability(logits: torch.Tensor, ids: list[int]) -> float:
    """The probability of any of `ids` under the last position's `logits` ([1, vocab] or [vocab])."""
    row = logits.reshape(-1, logits.shape[-1])[-1].float()
    return float(row.softmax(-1)[ids].sum())
