"""The sink + sliding-window cache: chunking invariance, the position rule past the window, bounded memory."""

from __future__ import annotations

import pytest
import torch

from omni.model.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig


def _model(layers: int = 2, mrope: bool = False) -> DecoderLM:
    cfg = DecoderConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=layers, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=256, qkv_bias=True,
                        mrope_section=(1, 1, 2) if mrope else None, architecture="qwen2")
    torch.manual_seed(0)
    m = DecoderLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.eval()


def _feed(m: DecoderLM, cache: CacheConfig, ids: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    state = m.init_state(cache)
    outs, start = [], 0
    for n in pieces:
        outs.append(m(state, input_ids=ids[:, start : start + n], logits="all").logits)
        start += n
    assert start == ids.shape[1]
    return torch.cat(outs, dim=1)


# Float32 math with the cache stored narrower: each K/V value is rounded once when written and read back as
# stored. Different chunkings sum in different orders (float32 logits differ by <= 1.2e-6 over 8 seeds),
# and a 1e-7 difference can flip one stored value to the neighbouring 16-bit step (2^-10 of it for float16,
# 2^-7 for bfloat16) that the next layer reads: measured worst 1.5e-4 (float16) and 3.8e-4 (bfloat16) on
# logits up to 2.9 over 8 seeds. A wrong slot, mask or sink rule gives > 1e-1.
_CHUNKING_TOLERANCE = {None: 2e-5, torch.float16: 5e-4, torch.bfloat16: 2e-3}


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_chunked_prefill_equals_one_shot_across_the_wrap(dtype: torch.dtype | None) -> None:
    m = _model()
    ids = torch.randint(0, 61, (1, 70))  # sinks 2 + window 9: wraps many times
    one_shot = _feed(m, CacheConfig(sinks=2, window=9, chunk=128, dtype=dtype), ids, [70])
    pieces = [3, 1, 5, 5, 1, 1, 4, 2, 5, 3] * 2 + [5, 5]
    chunked = _feed(m, CacheConfig(sinks=2, window=9, chunk=5, dtype=dtype), ids, pieces)
    torch.testing.assert_close(chunked, one_shot, rtol=0, atol=_CHUNKING_TOLERANCE[dtype])
    one_by_one = _feed(m, CacheConfig(sinks=2, window=9, chunk=1, dtype=dtype), ids, [1] * 70)
    torch.testing.assert_close(one_by_one, one_shot, rtol=0, atol=_CHUNKING_TOLERANCE[dtype])
    assert m.init_state(CacheConfig(dtype=dtype)).cache.k.dtype == (dtype or torch.float32)


def test_past_the_window_a_query_sees_sinks_just_before_its_window() -> None:
    """StreamingLLM's rule, checked against a fresh cache: with one layer, K/V depend only on tokens and
    positions, so the streaming logits of token n equal those of a new session fed the sinks and the last
    `window` tokens at contiguous positions 0 .. sinks + window - 1."""
    m = _model(layers=1)
    S, W = 3, 8
    ids = torch.randint(0, 61, (1, 40))
    streaming = _feed(m, CacheConfig(sinks=S, window=W, chunk=4), ids, [4] * 10)
    for n in (S + W - 1, S + W, 25, 39):
        window = ids[:, max(S, n - W + 1) : n + 1]
        fresh = m(m.init_state(CacheConfig(sinks=S, window=64, chunk=64)),
                  input_ids=torch.cat([ids[:, :S], window], dim=1)).logits
        torch.testing.assert_close(streaming[:, n], fresh, rtol=0, atol=2e-5)


def test_runs_past_capacity_with_constant_memory_and_determinism() -> None:
    m = _model()
    cache = CacheConfig(sinks=2, window=10, chunk=4)
    ids = torch.randint(0, 61, (1, 8))

    def run() -> tuple[list[int], torch.Tensor]:
        state = m.init_state(cache)
        addresses = (state.cache.k.data_ptr(), state.cache.v.data_ptr(), state.cache.nbytes())
        logits = m(state, input_ids=ids).logits
        tokens = []
        for _ in range(10 * cache.capacity):  # far past capacity
            assert torch.isfinite(logits).all()
            t = logits.argmax(-1, keepdim=True)
            tokens.append(int(t))
            logits = m(state, input_ids=t).logits
        assert (state.cache.k.data_ptr(), state.cache.v.data_ptr(), state.cache.nbytes()) == addresses
        assert state.next_position == 8 + 10 * cache.capacity
        return tokens, logits

    a, la = run()
    b, lb = run()
    assert a == b
    torch.testing.assert_close(la, lb, rtol=0, atol=0)


def test_three_equal_mrope_axes_equal_plain_rope() -> None:
    inv = rope_inv_freq(16, 1e6)
    pos = torch.arange(5, 5 + 11)[None]  # [1, T]
    cos, sin = rope_cos_sin(pos, inv)
    cos3, sin3 = rope_cos_sin(pos[None].expand(3, 1, 11), inv, (2, 3, 3))
    torch.testing.assert_close(cos3, cos, rtol=0, atol=0)
    torch.testing.assert_close(sin3, sin, rtol=0, atol=0)
    x = torch.randn(1, 2, 11, 16)
    torch.testing.assert_close(apply_rope(x, cos3, sin3), apply_rope(x, cos, sin), rtol=0, atol=0)
    # and a whole model fed explicit equal 3-axis positions gives the same logits as plain positions
    m = _model(mrope=True)
    ids = torch.randint(0, 61, (1, 12))
    plain = m(m.init_state(), input_ids=ids, logits="all").logits
    three = m(m.init_state(), input_ids=ids, positions=torch.arange(12).expand(3, 1, 12), logits="all").logits
    torch.testing.assert_close(three, plain, rtol=0, atol=0)


def test_mrope_sections_take_angles_from_their_axis() -> None:
    inv = rope_inv_freq(16, 10000.0)
    pos = torch.stack([torch.full((1, 4), 3), torch.full((1, 4), 7), torch.full((1, 4), 11)])
    cos, _ = rope_cos_sin(pos, inv, (2, 3, 3))
    expect = torch.cat([3 * inv[:2], 7 * inv[2:5], 11 * inv[5:]]).cos().float()
    torch.testing.assert_close(cos[0, 0, :8], expect, rtol=0, atol=1e-7)
    torch.testing.assert_close(cos[0, 0, 8:], expect, rtol=0, atol=1e-7)


def test_truncate_rolls_back_a_reply_exactly() -> None:
    m = _model()
    cache = CacheConfig(sinks=2, window=12, chunk=4)
    ids = torch.randint(0, 61, (1, 20))
    state = m.init_state(cache)
    m(state, input_ids=ids[:, :16])
    before = state.cache.length
    m(state, input_ids=ids[:, 16:19])  # a short "reply" of 3 tokens
    state.cache.truncate(before)
    state.next_position = before
    again = m(state, input_ids=ids[:, 16:20], logits="all").logits
    fresh_state = m.init_state(cache)
    m(fresh_state, input_ids=ids[:, :16])
    want = m(fresh_state, input_ids=ids[:, 16:20], logits="all").logits
    torch.testing.assert_close(again, want, rtol=0, atol=1e-6)


def test_half_precision_cache_keeps_the_packaged_models_greedy_replies() -> None:
    """The default 4-bit model (fused C steps when the kernels build, else torch) with a float16 cache
    against the same model with a float32 cache: the same greedy tokens and close logits at every step."""
    from omni.model.loaders import load_lm

    lm = load_lm()
    prompts = ["Explain why the sky looks blue in one paragraph.", "Write a short poem about a lighthouse keeper.",
               "List three uses of copper and say why it conducts electricity."]
    worst = 0.0
    for prompt in prompts:
        ids = torch.tensor([lm.tokenizer.encode(lm.tokenizer.render_chat([{"role": "user", "content": prompt}]))])
        runs = []
        for dtype in (torch.float32, torch.float16):
            state = lm.model.init_state(CacheConfig(sinks=4, window=1020, chunk=256, dtype=dtype))
            assert state.cache.k.dtype == dtype
            logits = lm.model(state, input_ids=ids).logits
            steps = []
            for _ in range(48):
                assert logits is not None
                steps.append(logits[0])
                logits = lm.model(state, input_ids=logits.argmax(-1, keepdim=True)).logits
            runs.append(torch.stack(steps))
        want, got = runs
        assert torch.equal(got.argmax(-1), want.argmax(-1)), prompt
        worst = max(worst, float(((got - want).abs().amax(-1) / want.abs().amax(-1)).max()))
    # float16 keeps 11 significant bits: each stored key and value is off by at most 2^-11 (4.9e-4) of
    # itself (SmolLM2's largest are |k| 28 and |v| 15, far from float16's 65504). Measured worst 7.8e-4 of
    # the largest logit over these 3 x 48 steps (5.2e-4 after 1,135 tokens of context); a cache read with
    # the wrong rows, scale or element type moves logits by > 5e-2.
    assert worst < 3e-3, worst


def test_a_watcher_hears_where_the_window_starts_before_it_moves() -> None:
    m = _model()
    cfg = CacheConfig(sinks=2, window=8, chunk=4)
    state = m.init_state(cfg)
    heard: list[tuple[int, int]] = []  # (edge, cache length when told)
    state.cache.watch(lambda edge: heard.append((edge, state.cache.length)))
    ids = torch.arange(1, 21)[None]
    for a, b in [(0, 4), (4, 8), (8, 11), (11, 12), (12, 16), (16, 20)]:
        m(state, input_ids=ids[:, a:b])
    # the window starts past index 0 once 9 tokens are in (edge = length - window); told before the length moves
    assert heard == [(3, 8), (4, 11), (8, 12), (12, 16)]
    state.cache.truncate(17)  # a rollback: the window's start moves back, nothing is told again
    m(state, input_ids=ids[:, :3])
    assert heard[-1] == (12, 16)
    m(state, input_ids=ids[:, :2])
    assert heard[-1] == (14, 20)
    state.cache.watch(None)
    m(state, input_ids=ids[:, :4])
    assert heard[-1] == (14, 20)
    told: list[int] = []
    state.cache.watch(told.append)  # a wrapped cache tells its edge at once
    assert told == [18]
    state.reset()  # everything leaves
    assert told == [18, 26] and state.cache.length == 0
    m(state, input_ids=ids[:, :8])
    assert told == [18, 26]
