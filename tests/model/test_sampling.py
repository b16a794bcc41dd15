"""Sampling against transformers' logits processors, and its statistics."""

from __future__ import annotations

import pytest
import torch

from omni.model.lm.sampling import SamplerState, SamplingConfig, sample


def _state(seed: int = 0, vocab: int = 50) -> SamplerState:
    return SamplerState.create(vocab, seed=seed)


def test_greedy_and_degenerate_settings_pick_the_argmax() -> None:
    logits = torch.randn(3, 50)
    want = logits.argmax(-1)
    assert torch.equal(sample(logits, SamplingConfig(), _state()), want)
    assert torch.equal(sample(logits, SamplingConfig(temperature=1.0, top_k=1), _state(vocab=50)), want)
    assert torch.equal(sample(logits, SamplingConfig(temperature=1.0, top_p=1e-6), _state()), want)


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    logits = torch.zeros(1, 50)
    cfg = SamplingConfig(temperature=1.0)
    a = [int(sample(logits, cfg, s)) for s in [_state(7)] for _ in range(20)]
    b = [int(sample(logits, cfg, s)) for s in [_state(7)] for _ in range(20)]
    c = [int(sample(logits, cfg, s)) for s in [_state(8)] for _ in range(20)]
    assert a == b and a != c


def test_temperature_sampling_follows_the_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    cfg = SamplingConfig(temperature=0.7)
    state = SamplerState.create(4, seed=1)
    n = 20000
    counts = torch.bincount(torch.stack([sample(logits, cfg, state) for _ in range(n)]).view(-1), minlength=4)
    expect = torch.softmax(logits[0] / 0.7, -1)
    # binomial standard error at n=20000 is <= 0.0036; 5 sigma
    torch.testing.assert_close(counts.float() / n, expect, rtol=0, atol=0.018)


def test_top_k_top_p_and_repetition_penalty_match_transformers() -> None:
    tr = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    torch.manual_seed(3)
    logits = torch.randn(2, 50) * 3
    seen_ids = torch.tensor([[1, 5, 7, 7], [0, 2, 49, 3]])
    state = _state()
    state.observe(seen_ids)
    ref = tr.RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    ref = tr.TopKLogitsWarper(10)(seen_ids, ref / 0.9)
    ref = tr.TopPLogitsWarper(0.8)(seen_ids, ref)
    allowed = torch.isfinite(ref)
    cfg = SamplingConfig(temperature=0.9, top_k=10, top_p=0.8, repetition_penalty=1.3)
    drawn = torch.stack([sample(logits, cfg, state) for _ in range(400)], dim=1)  # [2, 400]
    for row in range(2):
        got = set(drawn[row].tolist())
        assert got <= set(allowed[row].nonzero().view(-1).tolist())
        assert len(got) >= 2  # it samples, it is not greedy
    # the greedy choice under the penalty equals the reference's argmax
    greedy = sample(logits, SamplingConfig(repetition_penalty=1.3), state)
    want = tr.RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone()).argmax(-1)
    assert torch.equal(greedy, want)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=0)])
def test_bad_settings_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingConfig(**bad)  # type: ignore[arg-type]
