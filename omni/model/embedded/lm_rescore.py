"""How likely a text LM finds each of a few candidate transcripts, for choosing among a recogniser's n-best.

Whisper base mishears synthetic and accented voices in ways a language model can tell apart ("what vitamins
are found in our hinges" / "... in oranges"); when its beam search also holds the right words, the LM's
log-probability of the whole message picks it (`WhisperModel` adds `lm_weight` times this to Whisper's own
log-probability; benchmarks/asr_compare.py measures it). The candidates are scored as the text of a user
message in the LM's own chat template, so "a complete question a user would ask" is what scores high; the
end-of-turn marker after the text is scored too (a cut-off sentence is unlikely to end there).

All candidates go through the LM as one batch (right-padded: the padding comes after every scored token,
so the causal LM never sees it), with a state of their own: the conversation's cache is not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from omni.model.lm.decoder import default_cache_config

if TYPE_CHECKING:
    from omni.model.loaders import LoadedLM

__all__ = ["LMScorer"]

_MARK = "\x00TRANSCRIPT\x00"  # stands for the text while the chat template is rendered


class LMScorer:
    """`scorer(texts)` -> the LM's log-probability (nats) of each text as a user message; shares `lm`'s
    weights (read only) and allocates its own small cache per call."""

    def __init__(self, lm: LoadedLM) -> None:
        self.lm = lm
        tok = lm.tokenizer
        if tok.chat_template is not None:
            # Only the user turn's opening (ChatML's "<|im_start|>user\n"): rendered after an empty system
            # message, which is then cut off, so that no system prompt (SmolLM2's template adds a default one)
            # is fed with every candidate; it would cost as much as the candidates' own tokens.
            system = [{"role": "system", "content": ""}]
            rendered = tok.render_chat([*system, {"role": "user", "content": _MARK}], add_generation_prompt=False)
            head, _, tail = rendered.partition(_MARK)
            try:
                before = tok.render_chat(system, add_generation_prompt=False)
            except Exception:  # a template may refuse a conversation without a user turn: keep the whole head
                before = ""
            if before and head.startswith(before) and head != before:
                head = (tok.bos_token or "" if tok.add_bos else "") + head[len(before) :]
        else:
            head, tail = tok.bos_token or "", ""
        self.prefix = tok.encode(head) if head else []
        self.suffix = tok.encode(tail.rstrip("\n"))[:1]  # the end-of-turn marker only (not the newline after)
        if not self.prefix:  # the first scored token needs a token before it
            raise ValueError("the LM's tokenizer gives no prefix to score the first word after (no BOS, no template)")

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        tok, model = self.lm.tokenizer, self.lm.model
        seqs = [self.prefix + tok.encode(t.strip()) + self.suffix for t in texts]
        longest = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=model.device)
        # window: the sequence fits without sliding (sinks + window >= longest)
        cache = default_cache_config(model.cfg, window=max(64, longest))
        state = model.init_state(cache, batch=len(seqs))
        with torch.inference_mode():
            logits = model.forward(state, input_ids=ids, logits="all").logits
        assert logits is not None
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
        n0 = len(self.prefix)
        scores = []
        for b, s in enumerate(seqs):
            positions = torch.arange(n0 - 1, len(s) - 1, device=logp.device)  # each scored token's predictor
            scores.append(float(logp[b, positions, torch.tensor(s[n0:], device=logp.device)].sum()))
        return scores
