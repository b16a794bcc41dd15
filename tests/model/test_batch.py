"""Sessions batched on one device (omni/model/lm/batch.py): a session's greedy tokens are the same alone (the
plain DecoderLM loop) and batched with others that join, prefill and leave mid-stream; float32, CPU."""

from __future__ import annotations

import pytest
import torch

from omni.model.lm.batch import BatchedDecoder
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.thinker import ThinkerConfig

# sinks 2 + window 6: prompts of 5-9 tokens and 10 new ones wrap the ring (sink-shifted queries) in every session
CACHE = CacheConfig(sinks=2, window=6, chunk=4)
NEW = 10


@pytest.fixture(scope="module")
def model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ThinkerConfig.from_name("tiny").text).eval()


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 288, (n,), generator=gen).tolist() for n in (5, 9, 7, 6)]


def _alone(model: DecoderLM, prompt: list[int]) -> list[int]:
    """Greedy tokens of the model's own per-session path (SDPA prefill and decode, its own cache)."""
    state = model.init_state(CACHE)
    logits = model(state, input_ids=torch.tensor([prompt])).logits
    out: list[int] = []
    while True:
        assert logits is not None
        out.append(int(logits.argmax(-1)))
        if len(out) == NEW:
            return out
        logits = model(state, input_ids=torch.tensor([[out[-1]]])).logits


def test_batched_tokens_equal_alone_with_joins_and_leaves(model: DecoderLM) -> None:
    prompts = _prompts()
    want = [_alone(model, p) for p in prompts]
    # budget 6: the 9-token prompt needs 2-3 iterations while others decode; 3 rows for 4 sessions: the last
    # joins into the row the early leaver freed, a row whose cache still holds another session's K/V
    batch = BatchedDecoder(model, max_sessions=3, cache=CACHE, token_budget=6)
    cfg = SamplingConfig(max_new_tokens=NEW)
    sids = [batch.join(prompts[0], cfg), batch.join(prompts[1], cfg)]
    got: dict[int, list[int]] = {}
    for it in range(40):
        batch.step()
        if it == 2:
            sids.append(batch.join(prompts[2], cfg))  # joins while the others decode
        if it == 4:
            got[sids[0]] = batch.leave(sids[0])  # leaves mid-stream, 4-5 tokens in
        if it == 5:
            sids.append(batch.join(prompts[3], cfg))
        if all(batch.sessions[s].done for s in sids[1:] if s in batch.sessions) and len(sids) == 4:
            break
    for sid in sids[1:]:
        got[sid] = batch.leave(sid)
    assert 0 < len(got[sids[0]]) < NEW
    assert got[sids[0]] == want[0][: len(got[sids[0]])]
    for i in (1, 2, 3):
        assert got[sids[i]] == want[i], f"session {i}"


def test_prefill_budget_interleaves_with_decode(model: DecoderLM) -> None:
    batch = BatchedDecoder(model, max_sessions=2, cache=CacheConfig(sinks=2, window=32, chunk=8), token_budget=4)
    first = batch.join([1, 2, 3], SamplingConfig(max_new_tokens=50))
    assert batch.step() == {first: batch.sessions[first].tokens[0]}  # 3-token prompt: prefilled, first token
    batch.join(list(range(20, 40)), SamplingConfig(max_new_tokens=5))  # 20 tokens at budget 4 - 1 decode row
    for _ in range(7):
        out = batch.step()
        assert first in out  # the running session gets a token at every iteration of the long prefill
    assert not batch.sessions[1].pending and batch.sessions[1].tokens  # 7 iterations x 3 tokens >= 20


def test_step_reads_nothing_back(model: DecoderLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device step (what CUDA graphs capture) must not synchronise: no tensor -> Python value inside it."""
    batch = BatchedDecoder(model, max_sessions=2, cache=CACHE)
    batch.join([3, 4, 5])
    batch.step()
    batch.step()  # decoding now

    def forbidden(*_: object) -> None:
        raise AssertionError("host read inside the device step")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    logits = batch._device_step(2)
    monkeypatch.undo()
    assert logits.shape == (2, model.cfg.vocab_size)


def test_prompt_fed_in_blocks_then_reply_equals_alone(model: DecoderLM) -> None:
    """A user turn prefilled block by block while speaking (respond=False), the reply asked for at its end."""
    prompt = _prompts()[1] + _prompts()[2]  # 16 tokens in blocks of 7, 5 and 4
    batch = BatchedDecoder(model, max_sessions=2, cache=CACHE, token_budget=8)
    other = batch.join(_prompts()[0], SamplingConfig(max_new_tokens=NEW))
    sid = batch.join(prompt[:7], SamplingConfig(max_new_tokens=NEW), respond=False)
    for block, last in ((prompt[7:12], False), (prompt[12:], True)):
        for _ in range(2):
            batch.step()
        assert not batch.sessions[sid].tokens
        batch.feed(sid, block, respond=last)
    while not batch.sessions[sid].done:
        batch.step()
    assert batch.leave(sid) == _alone(model, prompt)
    assert batch.leave(other) == _alone(model, _prompts()[0])


def test_talker_steps_batched_equal_alone() -> None:
    """Two Talker sessions stepped through one BatchedDecoder over embeddings give the codes each gets alone."""
    from benchmarks.talker import tiny_configs
    from omni.model.talker import Talker, TalkerState, TalkerTextEmbeds

    torch.manual_seed(0)
    talker = Talker(tiny_configs()[0]).eval()
    E, cache = talker.cfg.embedding_size, CacheConfig(sinks=2, window=8, chunk=8)
    g = torch.Generator().manual_seed(3)
    texts = TalkerTextEmbeds(*(torch.randn(E, generator=g) for _ in range(3)))
    prompts = [torch.randn(1, n, E, generator=g) for n in (5, 3)]
    firsts = [torch.randn(1, E, generator=g) for _ in prompts]
    sampling = talker.cfg.sampling(seed=0, temperature=0.0, stop_token_ids=frozenset(), max_new_tokens=12)

    def alone(i: int) -> list[int]:
        state = talker.init_state(texts, sampling=sampling, cache=cache)
        talker.end_text(state)
        codes = [talker.start(state, prompts[i], firsts[i])]
        while len(codes) < 12:
            codes.append(talker.step(state))
        return codes

    batch = BatchedDecoder(talker.decoder, max_sessions=2, cache=cache, embeds=True)
    states = []
    for i in (0, 1):
        sid = batch.open()
        state = TalkerState(decoder=batch.sessions[sid].state, sampler=batch.sessions[sid].sampler,
                            sampling=sampling, texts=texts)
        talker.end_text(state)
        states.append((sid, state, [talker.start(state, prompts[i], firsts[i])]))
    for _ in range(11):
        logits = batch.decode({sid: talker.decode_input(state) for sid, state, _ in states})
        for sid, state, codes in states:
            row = batch.sessions[sid].row
            codes.append(talker.choose(state, logits[row : row + 1].float()))
    want = [alone(0), alone(1)]
    assert len(set(want[0] + want[1])) > 2  # codes that depend on the step, so a wrong row or slot would show
    assert [codes for _, _, codes in states] == want
