"""Could the embedded LM tell a finished question from a pause mid-sentence? (data for a semantic end of turn)

At a pause the embedded engine has already prefilled the user's words (prepare_turn). This measures, for
the spoken test questions (complete) and every proper prefix of them (incomplete), the probability SmolLM2
gives to the user's message ending right there (<|im_end|>, "?" or "."), and how many of each a threshold
would call finished. Prints numbers; decides nothing.

    .venv/bin/python benchmarks/end_of_turn.py [--heldout]

`--heldout` also measures the sentences of benchmarks/heldout_speech.py (both parts, 50 sentences no test
uses) and, per threshold, what a semantic end of turn would do at a pause (`--pause-ms` 200 of the default
`--silence-ms` 500): the precision of early ends (complete messages among all called finished, counting
every prefix as one pause, which overstates how often people pause mid-sentence) and the latency saved per
finished question (300 ms for each one called finished).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.heldout_speech import FRESH_SENTENCES, SENTENCES
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

    sets = [("test questions", (*IN_DOMAIN, *HELD_OUT))]
    if "--heldout" in sys.argv[1:]:
        sets.append(("held-out sentences", (*SENTENCES, *FRESH_SENTENCES)))
    for name, texts in sets:
        questions = sorted({q.lower().strip("?.!") for q in texts})
        complete = np.array([p_end(q) for q in questions])
        prefixes = [" ".join(q.split()[:k]) for q in questions for k in range(1, len(q.split()))]
        incomplete = np.array([p_end(p) for p in prefixes])
        print(f"{name}: {len(questions)} complete, {len(prefixes)} prefixes of them")
        for threshold in (0.1, 0.2, 0.3, 0.5, 0.7):
            early, wrong = int(np.sum(complete >= threshold)), int(np.sum(incomplete >= threshold))
            print(
                f"threshold {threshold}: called finished: {np.mean(complete >= threshold):.0%} of complete, "
                f"{np.mean(incomplete >= threshold):.1%} of prefixes; precision of early ends "
                f"{early / max(1, early + wrong):.2f}, saved {300 * np.mean(complete >= threshold):.0f} ms/question",
            )
        for threshold in (0.01, 0.02, 0.05):
            print(
                f"p < {threshold} (clearly unfinished): {np.mean(incomplete < threshold):.0%} of prefixes, "
                f"{np.mean(complete < threshold):.0%} of complete"
            )
        worst = sorted(zip(incomplete, prefixes, strict=True))[-5:]
        print("prefixes most likely called finished:", ", ".join(f"{p!r} {v:.2f}" for v, p in reversed(worst)))
        least = sorted(zip(complete, questions, strict=True))[:5]
        print("questions least likely called finished:", ", ".join(f"{q!r} {v:.2f}" for v, q in least))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
