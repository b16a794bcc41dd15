"""The decoder's GPU decode step (omni/model/lm/decode_kernels.py) with the Triton launchers forced, on the CPU
under TRITON_INTERPRET=1 (natively on a GPU), against the eager layer loop on a tiny float32 model: plain and
three-axis positions, a ring that wraps (sink-shifted queries), dense, int8 and int4 projections."""

from __future__ import annotations

import copy

import pytest
import torch

from omni.model.layers.quant_linear import quantize_decoder
from omni.model.lm.batch import BatchedDecoder
from omni.model.lm.decode_kernels import REFERENCE_OPS, TRITON_OPS
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.thinker import ThinkerConfig

# Both paths compute in float32 from the same weights and cache; they differ in summation order (tl.dot tiles
# vs BLAS, split-K softmax merge vs one softmax) and in rotary tables (float64 angles rounded once vs the
# eager path's folded float32 tables), each ~1e-7 relative per op. Logits here are O(1) after 2 layers of
# width 64; 1e-4 is ~100x that drift and far below the ~1e-1 that one wrong slot, sink or rotation causes.
ATOL = 1e-4


def _model(quant: str | None) -> DecoderLM:
    torch.manual_seed(0)
    model = DecoderLM(ThinkerConfig.from_name("tiny").text).eval()
    if quant is not None:
        quantize_decoder(model, quant)
    return model


@pytest.mark.parametrize(("quant", "mrope"), [(None, False), (None, True), ("int8", True), ("int4", True)])
def test_forced_triton_decode_matches_eager(device: torch.device, quant: str | None, mrope: bool) -> None:
    eager = _model(quant).to(device)
    fast = copy.deepcopy(eager)
    if device.type == "cuda":  # CUDA tensors would take the kernels by default: compare with their references
        eager.decode_ops = REFERENCE_OPS  # (on the CPU the reference is the eager layer loop with SDPA itself)
    fast.decode_ops = TRITON_OPS
    cache = CacheConfig(sinks=2, window=6, chunk=4)  # 4 prompt + 8 decode tokens wrap the 9-slot ring
    s_eager, s_fast = eager.init_state(cache), fast.init_state(cache)
    prompt = torch.randint(0, eager.cfg.vocab_size, (1, 4), device=device)
    for m, s in ((eager, s_eager), (fast, s_fast)):
        m(s, input_ids=prompt)  # prefill: the same SDPA path in both
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        tok = torch.randint(0, eager.cfg.vocab_size, (1, 1), generator=gen).to(device)
        n = 4 + step
        pos = torch.tensor([n, n + 3 * step, n - step]) if mrope else torch.tensor([n, n, n])
        positions = pos.view(3, 1, 1).to(device)
        want = eager(s_eager, input_ids=tok, positions=positions).logits
        got = fast(s_fast, input_ids=tok, positions=positions).logits
        assert want is not None and got is not None
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m, s=step: f"step {s}: {m}")
    assert s_fast.cache.length > cache.sinks + cache.window  # the sink-shift path ran
    torch.testing.assert_close(s_fast.cache.k, s_eager.cache.k, atol=ATOL, rtol=0)


def test_forced_triton_batched_sessions_match_reference_ops(device: torch.device) -> None:
    """BatchedDecoder's step on the Triton launchers ([B, S] slot_token, per-row slots, lengths and sink
    shifts, an idle scratch row) against the same scheduler on the eager references."""
    model = _model(None).to(device)
    cache = CacheConfig(sinks=2, window=6, chunk=4)
    runs = []
    for ops in (REFERENCE_OPS, TRITON_OPS):
        batch = BatchedDecoder(model, max_sessions=3, cache=cache, token_budget=8, ops=ops)
        a = batch.join([5, 6, 7, 8, 9], SamplingConfig(max_new_tokens=9))
        b = batch.join([1, 2, 3], SamplingConfig(max_new_tokens=6))  # row 1; row 2 stays idle (scratch)
        while not all(s.done for s in batch.sessions.values()):
            batch.step()
        k = batch.k.clone()
        runs.append((batch.leave(a), batch.leave(b), k))
    (ta, tb, ka), (ua, ub, kb) = runs
    assert (ta, tb) == (ua, ub)
    assert len(ta) == 9  # session a wraps its ring: 5 + 9 tokens > sinks + window
    torch.testing.assert_close(kb, ka, atol=ATOL, rtol=0)  # every K written, the scratch row's included
