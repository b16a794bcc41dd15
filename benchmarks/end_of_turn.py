"""Could the embedded LM tell a finished question from a pause mid-sentence? (data for a semantic end of turn)

At a pause the embedded engine has already prefilled the user's words (prepare_turn). This measures, for
the spoken test questions (complete) and every proper prefix of them (incomplete), the probability SmolLM2
gives to the user's message ending right there (<|im_end|>, "?" or "."), and how many of each a threshold
would call finished. Prints numbers; decides nothing.

    .venv/bin/python benchmarks/end_of_turn.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.spoken import HELD_OUT, IN_DOMAIN
from model.loaders import load_lm
from streaming.engines.embedded import DEFAULT_SYSTEM_PROMPT


def main() -> int:
    lm = load_lm()
    tok, model = lm.tokenizer, lm.model
    enders = [tok.encode(t)[0] for t in ("<|im_end|>", "?", ".")]

    def p_end(words: str) -> float:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": words}]
        text = tok.render_chat(messages)
        ids = tok.encode(text[: text.rindex(words) + len(words)])  # up to the end of the user's words
        logits = model(model.init_state(), input_ids=torch.tensor([ids])).logits
        assert logits is not None
        return float(logits[0].float().softmax(-1)[enders].sum())

    questions = sorted({q.lower().strip("?.!") for q in (*IN_DOMAIN, *HELD_OUT)})
    complete = np.array([p_end(q) for q in questions])
    prefixes = [" ".join(q.split()[:k]) for q in questions for k in range(1, len(q.split()))]
    incomplete = np.array([p_end(p) for p in prefixes])
    print(f"{len(questions)} complete questions, {len(prefixes)} prefixes of them")
    for threshold in (0.1, 0.2, 0.3, 0.5):
        print(f"threshold {threshold}: called finished: {np.mean(complete >= threshold):.0%} of complete, "
              f"{np.mean(incomplete >= threshold):.1%} of prefixes")
    worst = sorted(zip(incomplete, prefixes, strict=True))[-5:]
    print("prefixes most likely called finished:", ", ".join(f"{p!r} {v:.2f}" for v, p in reversed(worst)))
    least = sorted(zip(complete, questions, strict=True))[:5]
    print("questions least likely called finished:", ", ".join(f"{q!r} {v:.2f}" for v, q in least))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
