"""The fused decode step (one C call per token) against the model's per-layer torch path on the same weights.

Both paths multiply by the same Q4_1 blocks through kernels the other tests check against torch; what
this compares is everything else the step does in C: RMSNorm, q/k/v bias, rotary (plain and M-RoPE
tables), cache writes into ring slots, grouped-query attention with masks, shifted sinks after the cache
wraps, SiLU gating and residuals.
"""

from __future__ import annotations

import pytest
import torch

from omni.kernels.cpu import Library
from omni.kernels.q4_matmul import pack_q4_1
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.loaders.weights import Q4Weight, Weight, build_decoder, expected_shapes


def _random_q4_model(cfg: DecoderConfig, seed: int) -> DecoderLM:
    g = torch.Generator().manual_seed(seed)

    def get(name: str) -> Weight | None:
        shape = expected_shapes(cfg)[name]
        if name.startswith("layers.") and name.endswith("proj.weight"):
            N, K = shape
            q = torch.randint(0, 16, shape, dtype=torch.uint8, generator=g)
            d = torch.rand(N, K // 32, generator=g) * 0.02 + 0.01
            return Q4Weight(pack_q4_1(q, d, -7.5 * d), K)  # zero-centred weights
        if name.endswith("norm.weight"):
            return 1 + 0.1 * torch.randn(shape, generator=g)
        return torch.randn(shape, generator=g) * (0.5 if name.endswith("bias") else 1.0)

    return build_decoder(cfg, get, torch.float32, "cpu", "random", int4=True)


CONFIGS = {
    "llama": DecoderConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                           num_kv_heads=2, tie_word_embeddings=True),
    "qwen2-bias-mrope": DecoderConfig(vocab_size=80, hidden_size=128, intermediate_size=64, num_layers=3,
                                      num_heads=4, num_kv_heads=1, qkv_bias=True, mrope_section=(4, 6, 6),
                                      architecture="qwen2"),
}


# A float16 cache stores each key and value rounded to 11 significant bits. The two paths' float32 values
# differ by up to ~4e-5 of the largest entry (above), which can put them on either side of a float16
# rounding edge: one float16 step apart, at most 2^-10 of the entry. Measured worst: 4.7e-4.
_CACHE_TOLERANCE = {torch.float32: 2e-4, torch.float16: 2e-4 + 2**-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_steps_equal_the_per_layer_path(lib: Library, name: str, dtype: torch.dtype) -> None:
    cfg = CONFIGS[name]
    model = _random_q4_model(cfg, seed=len(name))
    fused = model._fused
    assert fused is not None, "a float32 model with every projection in Q4 blocks runs fused steps"
    cache = CacheConfig(sinks=2, window=9, chunk=4, dtype=dtype)  # wraps after 11 tokens: shifted sinks run
    a, b = model.init_state(cache), model.init_state(cache)
    assert a.cache.k.dtype == dtype
    prompt = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    la, lb = model(a, input_ids=prompt).logits, model(b, input_ids=prompt).logits
    worst_logits = worst_cache = 0.0
    for step in range(40):
        token = torch.tensor([[int(la.argmax())]])  # type: ignore[union-attr]
        positions = None
        if cfg.mrope_section is not None and step % 3 == 0:  # three different axes, as for vision tokens
            p = a.next_position
            positions = torch.tensor([[[p]], [[p + 2]], [[p + 5]]])
        if step == 20:  # barge-in style rollback: the dropped slots become masked (-inf) ones
            a.cache.truncate(a.cache.length - 3)
            b.cache.truncate(b.cache.length - 3)
        la = model(a, input_ids=token, positions=positions).logits
        model._fused = None
        lb = model(b, input_ids=token, positions=positions).logits
        model._fused = fused
        assert la is not None and lb is not None
        worst_logits = max(worst_logits, _rel(la, lb))
        worst_cache = max(worst_cache, _rel(a.cache.k, b.cache.k), _rel(a.cache.v, b.cache.v))
    # Both paths quantise the same activations to int16; float32 sums in a different order (~1e-7) can
    # move a value across a rounding edge, which changes it by one step (1/32767 of its block's largest
    # value, 3e-5) from the second layer on. Measured worst: 4e-5 of the largest logit (8e-5 with a
    # float16 cache) or float32 cache entry; a wrong rotary, mask, bias or sink rule gives > 1e-2.
    assert worst_logits < 2e-4, worst_logits
    assert worst_cache < _CACHE_TOLERANCE[dtype], worst_cache
    assert a.cache.length > cache.sinks + cache.window  # the cache did wrap


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def test_half_precision_rounding_equals_torch(lib: Library) -> None:
    check_f16_conversions(lib)


def check_f16_conversions(lib: Library) -> None:
    """The C conversions (F16C or the portable bit arithmetic) against torch's, bit for bit: every float16
    to float32, and float32 to float16 (round to nearest even) around every edge: ties, subnormals,
    the largest finite value 65504, overflow to infinity at 65520."""
    halves = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    widened = torch.empty(halves.shape, dtype=torch.float32)
    lib.lib.omni_f16_convert(halves.data_ptr(), widened.data_ptr(), halves.numel(), 0)
    want = halves.float()
    assert torch.equal(widened.isnan(), want.isnan())
    assert torch.equal(widened[~want.isnan()], want[~want.isnan()])

    g = torch.Generator().manual_seed(0)
    finite = halves[halves.isfinite()].float()
    ties = (finite[:-1] + finite[1:]) / 2  # exactly halfway between neighbours (float32 holds them exactly)
    singles = torch.cat([
        torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32).view(
            torch.float32),  # every exponent, so subnormals, overflow, infinities and NaNs too
        finite, ties, ties.nextafter(torch.tensor(float("inf"))), ties.nextafter(torch.tensor(float("-inf"))),
        torch.tensor([65504.0, 65519.996, 65520.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-26, -0.0]),
    ]).contiguous()
    narrowed = torch.empty(singles.shape, dtype=torch.float16)
    lib.lib.omni_f16_convert(singles.data_ptr(), narrowed.data_ptr(), singles.numel(), 1)
    want16 = singles.half()
    assert torch.equal(narrowed.isnan(), want16.isnan())
    ok = ~want16.isnan()
    assert torch.equal(narrowed[ok].view(torch.int16), want16[ok].view(torch.int16))


def test_fused_step_refuses_inconsistent_calls(lib: Library) -> None:
    model = _random_q4_model(CONFIGS["llama"], seed=3)
    fused = model._fused
    assert fused is not None
    state = model.init_state(CacheConfig(sinks=2, window=8, chunk=4))
    x = torch.zeros(64)
    rope = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="inconsistent plan"):
        fused(x, state.cache.k, state.cache.v, 5, torch.zeros(3), rope, None, 2)  # slot beyond the valid ones
    with pytest.raises(ValueError, match="float32"):
        fused(x.double(), state.cache.k, state.cache.v, 0, torch.zeros(1), rope, None, 2)
    with pytest.raises(ValueError, match="caches"):  # K and V of different element types
        fused(x, state.cache.k.half(), state.cache.v.float(), 0, torch.zeros(1), rope, None, 2)


def test_models_that_cannot_fuse_keep_the_per_layer_path(lib: Library) -> None:
    cfg = CONFIGS["llama"]
    model = _random_q4_model(cfg, seed=4)
    assert model._fused is not None
    bf16 = build_decoder(cfg, lambda n: torch.zeros(expected_shapes(cfg)[n]), torch.bfloat16, "cpu", "zeros")
    assert bf16._fused is None and not bf16.enable_fused_decode(lib)
    # cache element types: float16 by default for fused steps, the residual dtype elsewhere, else as configured
    assert model.init_state().cache.k.dtype == torch.float16
    assert bf16.init_state().cache.k.dtype == torch.bfloat16
    assert model.init_state(CacheConfig(dtype=torch.float32)).cache.v.dtype == torch.float32
