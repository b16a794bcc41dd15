"""Decode attention over the sink + ring KV cache (omni/kernels/decode_attention.py): Triton kernel against the
eager reference (partly filled and wrapped rings, sinks scored with their own query, GQA, one and several
batch rows of different lengths, one and several splits), and the reference against the model's attention."""

from __future__ import annotations

import pytest
import torch

from omni.kernels.decode_attention import decode_attention, decode_attention_reference, decode_attention_triton

SINKS, WINDOW, CHUNK = 3, 21, 6
RING = WINDOW + CHUNK - 1  # 26 ring slots (KVCache's rule): 5 of them hold stale tokens once wrapped
S = SINKS + RING  # 29 slots: not a multiple of the kernel's 32-slot step


def slot_tokens(length: int, sinks: int = SINKS, ring: int = RING) -> torch.Tensor:
    """[sinks + ring] token held by each slot after `length` tokens were written (-1: empty)."""
    tok = torch.full((sinks + ring,), -1, dtype=torch.long)
    for t in range(length):
        tok[t if t < sinks else sinks + (t - sinks) % ring] = t
    return tok


def _case(lengths: list[int], H: int, Hkv: int, D: int, dtype: torch.dtype, device: torch.device, seed: int,
          sinks: int = SINKS):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    k = torch.randn(B, Hkv, sinks + RING, D, generator=g)
    v = torch.randn(B, Hkv, sinks + RING, D, generator=g)
    q, q_sink = torch.randn(B, H, D, generator=g), torch.randn(B, H, D, generator=g)
    tok = torch.stack([slot_tokens(n, sinks) for n in lengths])
    return [t.to(dtype).to(device) for t in (q, q_sink, k, v)] + [torch.tensor(lengths).to(device), tok.to(device)]


# Row lengths: 1 (only the query itself), 17 (partly filled), 24 = sinks + window (full, not yet wrapped),
# 70 and 101 (wrapped more than twice, stale slots inside the ring that must stay invisible).
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("with_sink_query", [False, True])
def test_float32_several_rows(device: torch.device, num_splits: int, with_sink_query: bool) -> None:
    q, q_sink, k, v, lengths, tok = _case([1, 17, 24, 70, 101], H=6, Hkv=2, D=24, dtype=torch.float32,
                                          device=device, seed=num_splits)
    qs = q_sink if with_sink_query else None
    out = decode_attention_triton(q, k, v, lengths, tok, SINKS, WINDOW, qs, num_splits=num_splits)
    ref = decode_attention_reference(q, k, v, lengths, tok, SINKS, WINDOW, qs)
    # float32 throughout (ieee dots); only summation order and the online softmax's rescaling differ:
    # scores O(5), outputs |o| < 3: 1e-5 is ~100 float32 ulps of the largest terms.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out[0], v[0, :, :1].repeat_interleave(3, dim=0)[:, 0]), "a lone token attends to itself"


def test_one_row_shared_slot_table_no_sinks_and_mha(device: torch.device) -> None:
    q, _, k, v, lengths, tok = _case([45], H=4, Hkv=4, D=16, dtype=torch.float32, device=device, seed=3, sinks=0)
    out = decode_attention_triton(q, k, v, lengths, tok[0], 0, WINDOW, num_splits=2)  # slot_token [S]
    torch.testing.assert_close(out, decode_attention_reference(q, k, v, lengths, tok[0], 0, WINDOW),
                               rtol=1e-5, atol=1e-5)


def test_truncated_slots_are_invisible(device: torch.device) -> None:
    q, q_sink, k, v, lengths, tok = _case([40, 40], H=6, Hkv=3, D=24, dtype=torch.float32, device=device, seed=4)
    tok[1, SINKS + 5] = -1  # as KVCache.truncate leaves a forgotten slot
    out = decode_attention_triton(q, k, v, lengths, tok, SINKS, WINDOW, q_sink, num_splits=2)
    torch.testing.assert_close(out, decode_attention_reference(q, k, v, lengths, tok, SINKS, WINDOW, q_sink),
                               rtol=1e-5, atol=1e-5)
    v2 = v.clone()
    v2[1, :, SINKS + 5] += 100.0
    out2 = decode_attention_triton(q, k, v2, lengths, tok, SINKS, WINDOW, q_sink, num_splits=2)
    assert torch.equal(out2[1], out[1]), "a slot marked -1 must not be read into the result"


def test_bfloat16(device: torch.device) -> None:
    q, q_sink, k, v, lengths, tok = _case([9, 88], H=8, Hkv=2, D=32, dtype=torch.bfloat16, device=device, seed=6)
    out = decode_attention_triton(q, k, v, lengths, tok, SINKS, WINDOW, q_sink, num_splits=2)
    exact = decode_attention_reference(*(t.double() for t in (q, k, v)), lengths, tok, SINKS, WINDOW, q_sink.double())
    # Against float64 attention on the same bf16 inputs. The kernel's scores are float32 (exact products);
    # it rounds each probability to bf16 for the V sum (2^-9 relative, while the normaliser keeps the
    # float32 ones: another 2^-9) and the output (2^-9 of |o| <= max|v|): |out - exact| <= 3 * 2^-9 * max|v|.
    # (The reference, like the model, also rounds q * scale and the scores to bf16, so it is further off.)
    tol = 3 * 2**-9 * float(v.float().abs().max())
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=tol)


def test_reference_equals_the_model_attention() -> None:
    """Through a real KVCache: chunked prefill until the ring wraps, then one decode step scored by the
    model's attention (shifted sinks) and by the reference; before wrapping, against the model's SDPA path."""
    import torch.nn.functional as F

    from omni.model.layers.attention import Attention
    from omni.model.layers.rope import apply_rope, fold_rope, rope_cos_sin, rope_inv_freq
    from omni.model.lm.kv_cache import CacheConfig, KVCache

    H, Hkv, D = 6, 2, 16
    cfg = CacheConfig(sinks=SINKS, window=WINDOW, chunk=CHUNK)
    cache = KVCache(cfg, num_layers=1, batch=1, kv_heads=Hkv, head_dim=D)
    attn = Attention(dim=8, num_heads=H, num_kv_heads=Hkv, head_dim=D, qkv_bias=False)
    inv = rope_inv_freq(D, 1e4)
    g = torch.Generator().manual_seed(8)
    written, checked = 0, {"sdpa": 0, "shifted": 0}
    for T in [5, 1, 6, 1, 4, 1, 6, 6, 1, 3, 6, 6, 2] + [1] * 12:
        pos = torch.arange(written, written + T) * 2  # positions advance faster than tokens (as after media)
        plan = cache.plan(pos)
        cache.write(0, plan.slots, torch.randn(1, Hkv, T, D, generator=g), torch.randn(1, Hkv, T, D, generator=g))
        written += T
        assert torch.equal(cache.slot_token, slot_tokens(written)), "the test's slot rule is KVCache's"
        if T != 1:
            continue
        q = torch.randn(1, H, 1, D, generator=g)
        q_rot = apply_rope(q, *rope_cos_sin(pos[None], inv))
        keys, values = cache.k[0, :, :, : plan.n_valid], cache.v[0, :, :, : plan.n_valid]
        lengths = torch.tensor([written])
        if plan.sink_shift is None:
            want = F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=plan.mask, scale=attn.scale,
                                                  enable_gqa=True)
            got = decode_attention_reference(q_rot[:, :, 0], cache.k[0], cache.v[0], lengths, cache.slot_token,
                                             SINKS, WINDOW)
            checked["sdpa"] += 1
        else:
            cos_s, sin_s = rope_cos_sin((pos - plan.sink_shift)[None], inv)
            want = attn._attend_shifted_sinks(q, q_rot, keys, values, fold_rope(cos_s, sin_s, q.dtype), SINKS, plan)
            got = decode_attention_reference(q_rot[:, :, 0], cache.k[0], cache.v[0], lengths, cache.slot_token,
                                             SINKS, WINDOW, q_sink=apply_rope(q, cos_s, sin_s)[:, :, 0])
            checked["shifted"] += 1
        # Same float32 operations over the same visible slots (the model reads only n_valid of them;
        # SDPA's kernel sums in its own order): 1e-6 is a few ulps of outputs |o| < 3.
        torch.testing.assert_close(got, want[:, :, 0], rtol=1e-6, atol=1e-6)
    assert checked["sdpa"] >= 2 and checked["shifted"] >= 8


def test_dispatch_and_errors() -> None:
    q, q_sink, k, v, lengths, tok = _case([5, 30], H=4, Hkv=2, D=8, dtype=torch.float32, device=torch.device("cpu"),
                                          seed=2)
    assert torch.equal(decode_attention(q, k, v, lengths, tok, SINKS, WINDOW, q_sink),
                       decode_attention_reference(q, k, v, lengths, tok, SINKS, WINDOW, q_sink))
    with pytest.raises(ValueError, match="multiple of KV heads"):
        decode_attention(q[:, :3], k, v, lengths, tok, SINKS, WINDOW)
    with pytest.raises(ValueError, match=r"lengths must be integer \[B\]"):
        decode_attention(q, k, v, lengths[:1], tok, SINKS, WINDOW)
    with pytest.raises(ValueError, match="slot_token"):
        decode_attention(q, k, v, lengths, tok[:, :-1], SINKS, WINDOW)
