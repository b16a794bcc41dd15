"""Choosing among Whisper's beam hypotheses with a text LM: the choice rule (`pick_hypothesis`), the LM's
log-probabilities (`LMScorer`, against transformers on a tiny random Llama with a word-level tokenizer and a
chat template), and the wiring in `WhisperModel` (the packaged Whisper base with a stand-in LM)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.model.embedded.lm_rescore import LMScorer
from omni.model.embedded.wer import wer
from omni.model.embedded.whisper import WhisperConfig, WhisperModel, pick_hypothesis

WORDS = "what is the capital of france products on a good gold book mystery".split()
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s> {% endfor %}"


class Recorder:
    """A stand-in LM: fixed scores per text, and a record of what it was asked."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores, self.calls = scores, []  # type: ignore[var-annotated]

    def __call__(self, texts: Sequence[str]) -> list[float]:
        self.calls.append(list(texts))
        return [self.scores.get(t, -100.0) for t in texts]


def test_pick_hypothesis_weighs_whisper_and_the_lm() -> None:
    cfg = WhisperConfig(lm_weight=0.5, rescore_margin=3.0)
    texts = ["What is the capital on products?", "what is the capital on products", "What is the capital of France?",
             "Watt is the capital of France?"]  # fmt: skip
    summed = [-4.0, -4.5, -5.0, -9.0]
    lm = Recorder({"What is the capital on products?": -30.0, "What is the capital of France?": -12.0})
    # -5 + 0.5 * -12 = -11 beats -4 + 0.5 * -30 = -19; the lower-case copy and the hypothesis 5 nats behind
    # never reach the LM
    assert pick_hypothesis(texts, summed, lm, cfg) == "What is the capital of France?"
    assert lm.calls == [["What is the capital on products?", "What is the capital of France?"]]
    # weight 0: Whisper's best; spelled as its best-scored copy
    assert pick_hypothesis(texts, summed, lm, WhisperConfig(lm_weight=0.0)) == "What is the capital on products?"
    lone = Recorder({})
    assert pick_hypothesis(texts[:2], summed[:2], lone, cfg) == texts[0] and lone.calls == []  # one set of words
    assert pick_hypothesis(["", "..."], [-1.0, -2.0], lone, cfg) == ""
    with pytest.raises(ValueError, match="lm_weight"):
        WhisperConfig(lm_weight=-1.0)


def _tiny_lm(tmp_path: Path) -> tuple[object, LMScorer]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    from omni.model.lm.tokenizer import TextTokenizer
    from omni.model.loaders import load_lm
    from tests.model.tiny_hf import make_tiny_hf

    reference, directory = make_tiny_hf(tmp_path, "llama")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "system", "user", *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens(["<s>", "</s>"])  # (in the vocabulary already: split out of "<s>user")
    tok.save(str(directory / "tokenizer.json"))
    lm = load_lm(directory, dtype=torch.float32)
    lm.tokenizer = TextTokenizer(tok, TEMPLATE, bos_token="<s>", eos_token="</s>")
    return reference, LMScorer(lm)


def test_lm_scorer_equals_transformers_log_probabilities(tmp_path: Path) -> None:
    reference, scorer = _tiny_lm(tmp_path)
    tok = scorer.lm.tokenizer
    # the user turn's opening alone, "<s>user"; "</s>" after the text is scored too
    assert tok.decode(scorer.prefix, skip_special_tokens=False).split() == ["<s>", "user"]
    assert tok.decode(scorer.suffix, skip_special_tokens=False) == "</s>"
    texts = ["what is the capital of france", "capital", "what is a good mystery book on products"]  # 3 lengths
    got = scorer(texts)
    for text, score in zip(texts, got):
        ids = scorer.prefix + tok.encode(text) + scorer.suffix
        with torch.no_grad():
            logp = torch.log_softmax(reference(torch.tensor([ids])).logits[0].double(), -1)  # type: ignore[operator]
        n0 = len(scorer.prefix)
        want = sum(float(logp[i - 1, ids[i]]) for i in range(n0, len(ids)))
        assert math.isclose(score, want, rel_tol=1e-4, abs_tol=1e-3), (text, score, want)
    assert scorer([]) == []


@pytest.fixture(scope="module")
def capital() -> np.ndarray:
    """The issue's example: Whisper base alone hears "What is the capital on France?" (measured)."""
    from benchmarks.spoken import spoken_fresh

    return spoken_fresh("What is the capital of France?")


@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    return WhisperModel()


def test_whisper_asks_the_rescorer_and_returns_one_of_its_hypotheses(
    whisper: WhisperModel, capital: np.ndarray
) -> None:
    plain = whisper.transcribe(capital)
    seen: list[list[str]] = []

    def prefer_last(texts: Sequence[str]) -> list[float]:
        seen.append(list(texts))
        return [float(i) for i in range(len(texts))]

    # margin inf: every distinct hypothesis of the beam goes to the LM; a huge weight makes its word final
    whisper.rescorer, whisper.config = prefer_last, WhisperConfig(rescore_margin=math.inf, lm_weight=1e6)
    try:
        text = whisper.transcribe(capital)
        assert len(seen) == 1 and len(seen[0]) > 1 and plain in seen[0]
        assert text == seen[0][-1]
        assert whisper.transcribe(capital, rescore=False) == plain and len(seen) == 1  # captions: Whisper alone
    finally:
        whisper.rescorer, whisper.config = None, WhisperConfig()


def test_the_packaged_lm_prefers_what_was_said(whisper: WhisperModel, capital: np.ndarray) -> None:
    """SmolLM2-135M finds the right words of the issue's example far likelier than Whisper's misheard ones.
    (Whisper itself puts them 2.2 nats behind its best, just outside `rescore_margin` 2, chosen on the
    tuning part: so this utterance stays misheard with today's settings.)"""
    from omni.model.loaders import load_lm

    misheard = whisper.transcribe(capital)
    assert wer("What is the capital of France?", misheard) > 0  # the mistake a LM can correct
    right, wrong = LMScorer(load_lm())(["What is the capital of France?", misheard])
    assert right > wrong + 10
