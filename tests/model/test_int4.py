"""4-bit weights kept as stored in GGUF Q4_0/Q4_1: packing, the linear layer, and whole models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from omni.kernels.cpu import library
from omni.kernels.q4_matmul import unpack_q4_1
from omni.model.layers import int4_linear
from omni.model.layers.int4_linear import (
    _BLOCK_N,
    Int4Linear,
    Q4Linear,
    _blocked_layout_matches,
    _pack_blocked,
    pack_int4,
)
from omni.model.loaders import gguf_loader, weights
from omni.model.loaders.gguf_loader import load_gguf_decoder
from omni.model.loaders.gguf_quants import q4_1_blocks
from tests.model.test_gguf import TYPES, _write_tiny_gguf

torch_int4 = pytest.mark.skipif(not hasattr(torch, "_weight_int4pack_mm_for_cpu"), reason="torch without CPU int4")
needs_kernels = pytest.mark.skipif(library() is None, reason="the C kernels could not be built (no C compiler?)")


@pytest.fixture(params=["kernels", "torch"])
def int4_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[torch.nn.Module]:
    """Load 4-bit models on the C kernels (Q4Linear) or on torch's int4 GEMM (Int4Linear, the fallback)."""
    if request.param == "kernels":
        if library() is None:
            pytest.skip("the C kernels could not be built (no C compiler?)")
        return Q4Linear
    if not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        pytest.skip("torch without CPU int4")
    monkeypatch.setattr(weights, "library", lambda: None)
    monkeypatch.setattr(gguf_loader, "library", lambda: None)
    return Int4Linear


@torch_int4
@pytest.mark.parametrize("shape", [(32, 64), (96, 128), (64, 8), (48, 64)])
def test_fast_packing_equals_torch_converter(shape: tuple[int, int]) -> None:
    """`pack_int4` always equals torch's converter; the fast layout is checked only where this CPU's torch
    packs the same way (32-row blocks; with AVX-512 torch packs 64-row blocks and `pack_int4` falls back)."""
    q = torch.randint(0, 16, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    want = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(pack_int4(q), want)
    if shape[0] % _BLOCK_N == 0 and _blocked_layout_matches():
        assert torch.equal(_pack_blocked(q), want)


@torch_int4
def test_packing_falls_back_to_torch_when_its_layout_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this CPU's torch does, a fast layout that disagrees with torch's is never used."""
    q = torch.randint(0, 16, (64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    want = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    monkeypatch.setattr(int4_linear, "_pack_blocked", lambda q: torch.zeros_like(want))  # a layout torch never uses
    int4_linear._blocked_layout_matches.cache_clear()
    try:
        assert not int4_linear._blocked_layout_matches()
        assert torch.equal(pack_int4(q), want)
    finally:
        int4_linear._blocked_layout_matches.cache_clear()  # the next caller measures the real layout again


@torch_int4
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_linear_matches_the_dequantised_weights(qtype: Q) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    raw = quantize(w, qtype)
    exact = torch.from_numpy(dequantize(raw, qtype))
    q, d, m = unpack_q4_1(q4_1_blocks(raw.reshape(-1), qtype, (96, 256)), 256)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    torch.testing.assert_close(q.float() * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1), exact)

    bias = torch.from_numpy(rng.standard_normal(96).astype(np.float32))
    layer = Int4Linear(q, d, m, bias=bias)
    x = torch.from_numpy(rng.standard_normal((5, 256)).astype(np.float32))
    want = x @ exact.T + bias
    got = layer(x)
    assert got.shape == (5, 96) and got.dtype == torch.float32
    # The kernel multiplies bfloat16 activations by the 4-bit weights with bfloat16 scales: its error
    # should be that of an ordinary bfloat16 matmul of the same weights (measured ratio ~1), not more.
    bf16_err = ((x.bfloat16() @ exact.bfloat16().T).float() + bias - want).abs().max()
    err = (got - want).abs().max()
    assert err <= 2 * bf16_err, (err, bf16_err)
    assert torch.equal(layer(x[:1]), got[:1])  # one-row decode equals the same row inside a batch


def test_tiny_gguf_with_4bit_projections_runs_them_in_4_bits(tmp_path: Path, int4_path: type) -> None:
    types = {
        **TYPES,
        **{k: Q.Q4_1 for k in ("attn_q", "attn_k", "attn_v", "attn_output")},
        **{k: Q.Q4_0 for k in ("ffn_gate", "ffn_up", "ffn_down")},
    }
    ref, path = _write_tiny_gguf(tmp_path, types=types)
    int4 = load_gguf_decoder(path, dtype=torch.bfloat16, int4=True)
    bf16 = load_gguf_decoder(path, dtype=torch.bfloat16)
    assert sum(isinstance(m, int4_path) for m in int4.modules()) == 2 * 4  # qkv, o, gate_up, down per layer
    ids = torch.randint(0, 64, (1, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids).logits  # type: ignore[operator]
    got = int4(int4.init_state(), input_ids=ids, logits="all").logits
    dense = bf16(bf16.init_state(), input_ids=ids, logits="all").logits
    assert got is not None and dense is not None
    err, dense_err = (got.float() - want).abs().max(), (dense.float() - want).abs().max()
    # Same stored weights, both computed in bfloat16: the 4-bit path must be as close to the exact float32
    # reference as the expanded bfloat16 weights are (a wrong un-permutation or packing gives errors ~ |logits|).
    assert err <= 2 * dense_err + 1e-2, (err, dense_err)
    assert want.abs().max() > 10 * err


@needs_kernels
def test_4bit_float32_model_on_the_kernels_matches_transformers(tmp_path: Path) -> None:
    """With a float32 residual stream the only approximation left is the int16 activations."""
    types = {**TYPES, **{k: Q.Q4_1 for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")},
             **{k: Q.Q4_0 for k in ("ffn_gate", "ffn_up")}}
    ref, path = _write_tiny_gguf(tmp_path, types=types)
    model = load_gguf_decoder(path, dtype=torch.float32, int4=True)
    assert model._fused is not None
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids).logits[0]  # type: ignore[operator]
    state = model.init_state()
    prefill = model(state, input_ids=ids[:, :8], logits="all").logits
    steps = [model(state, input_ids=ids[:, i : i + 1]).logits for i in range(8, 12)]  # fused decode steps
    assert prefill is not None and all(s is not None for s in steps)
    got = torch.cat([prefill[0], *[s for s in steps if s is not None]])
    # int16 activations: each projection's input is off by at most half of 1/32767 of its block's largest
    # value (~3e-5 relative error per projection on SmolLM2); through 8 projections measured 1.3e-4 of the
    # largest logit here. 1e-3 still catches any layout or un-permutation slip (those give errors ~1).
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3


@needs_kernels
def test_q8_0_head_on_the_kernels_rescores_its_leading_candidates_exactly(tmp_path: Path) -> None:
    _, path = _write_tiny_gguf(tmp_path)
    model = load_gguf_decoder(path, dtype=torch.float32, int4=True, embed_dtype=torch.bfloat16)
    assert model.lm_head is not None and model.narrow_head is not None and model.narrow_head.dtype == torch.uint8
    hidden = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 4
    exact = hidden @ model.lm_head.weight.T
    got = model.head(hidden)
    top = exact.topk(4, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top), rtol=1e-6, atol=1e-5)
    # The tiny checkpoint's head is stored as Q8_0, so even the candidates not re-scored are exact up to
    # float32 summation order.
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-4)


def test_narrow_head_rescores_its_leading_candidates_exactly(tmp_path: Path) -> None:
    _, path = _write_tiny_gguf(tmp_path)
    model = load_gguf_decoder(path, dtype=torch.float32, embed_dtype=torch.bfloat16)
    assert model.dtype == torch.float32 and model.lm_head is not None and model.lm_head.weight.dtype == torch.float32
    assert model.narrow_head is not None and model.narrow_head.dtype == torch.bfloat16
    hidden = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 4
    exact = hidden @ model.lm_head.weight.T  # the exact head
    got = model.head(hidden)
    assert got.dtype == torch.float32
    top = exact.topk(4, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top), rtol=1e-6, atol=1e-5)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))
    torch.testing.assert_close(got, exact, rtol=1e-2, atol=0.1)  # the rest: scored by the bfloat16 copy
    assert not torch.equal(got, exact)  # (which does round them)
