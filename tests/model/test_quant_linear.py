"""Weight-only int8 / int4 projections (omni/model/layers/quant_linear.py) in a tiny decoder: the quantised model
equals the dense model carrying the dequantised weights, and quantisation error stays within its bound."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from omni.model.layers.quant_linear import GroupInt4Linear, Int8Linear, quantize_decoder
from omni.model.lm.decoder import DecoderLM
from omni.model.thinker import ThinkerConfig


def _tiny() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ThinkerConfig.from_name("tiny").text).eval()


def _dequantised_copy(model: DecoderLM) -> DecoderLM:
    """The same model with every quantised projection expanded back to a float32 nn.Linear."""
    dense = copy.deepcopy(model)
    for layer in dense.layers:
        for parent, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                             (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")):
            q = getattr(parent, name)
            if isinstance(q, Int8Linear | GroupInt4Linear):
                lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
                lin.weight.data = q.dequantized()
                if q.bias is not None:
                    lin.bias.data = q.bias.float()
                setattr(parent, name, lin)
    return dense


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantised_decoder_equals_dequantised_reference(kind: str) -> None:
    model = _tiny()
    assert quantize_decoder(model, kind) == 4 * model.cfg.num_layers  # tiny widths 64 and 96 all quantise
    ref = _dequantised_copy(model)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    s, r = model.init_state(), ref.init_state()
    got, want = model(s, input_ids=ids, logits="all").logits, ref(r, input_ids=ids, logits="all").logits
    assert got is not None and want is not None
    # Both are float32 matmuls of the same effective weights (the reference kernels dequantise exactly:
    # int8 * f32 scale, 4-bit code * bf16 scale + bf16 min are exact in f32); only summation order differs,
    # ~1e-7 relative over K <= 96 terms. 1e-5 on O(1) logits is 100x that.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for _ in range(3):  # decode steps go through the same projections
        tok = got[:, -1:].argmax(-1)
        got = model(s, input_ids=tok, logits="all").logits
        want = ref(r, input_ids=tok, logits="all").logits
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("kind", "bound"), [("int8", 1 / 254), ("int4", 1 / 30 + 2**-8)])
def test_quantisation_error_is_bounded(kind: str, bound: float) -> None:
    # int8: round to the nearest of 127 steps of max|w| -> error <= max|w| / 254 per row. int4: 15 steps of the
    # group's range -> <= range / 30, plus the bf16 rounding of min (2^-9 of |min|, below the range for these
    # weights) and of the scale (2^-9 of 15 steps of it, i.e. of the range): 2^-8 of the range covers both.
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(3))
    lin = nn.Linear(128, 48, bias=False)
    lin.weight.data = w
    q = Int8Linear.from_linear(lin) if kind == "int8" else GroupInt4Linear.from_linear(lin, 64)
    err = (q.dequantized() - w).abs()
    span = w.abs().amax(1, keepdim=True) if kind == "int8" else \
        (w.view(48, 2, 64).amax(-1) - w.view(48, 2, 64).amin(-1)).repeat_interleave(64, 1)
    assert bool((err <= bound * span + 1e-7).all())
    assert float(err.max()) > 0  # it did quantise


def test_quantize_rejects_unknown_kind_and_requantising() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="int8"):
        quantize_decoder(model, "int3")
    quantize_decoder(model, "int8")
    with pytest.raises(ValueError, match="already Int8Linear"):
        quantize_decoder(model, "int4")
