"""The C kernels (omni/kernels/cpu/omni_cpu.c) against their torch references and against ggml's own formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from omni.kernels.cpu import _BASE_FLAGS, KernelBuildError, Library, _compile
from omni.kernels.q4_matmul import (
    pack_q4_1,
    q4_1_matmul,
    q4_1_matmul_reference,
    quantize_q16_act,
    quantize_q16_act_reference,
    unpack_q4_1,
)
from omni.kernels.q8_matmul import dequantize_q8_0, pack_q8_0, q8_0_matmul, q8_0_matmul_reference
from omni.model.loaders.gguf_quants import q4_1_blocks


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_activation_quantisation_equals_reference(lib: Library) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=g) * torch.logspace(-3, 3, 96)  # blocks of very different scales
    x[1, :32] = 0  # an all-zero block: scale 0, no division by zero
    x[2, 40] = 1e4  # an outlier sharing its block with small values
    x[3, 64:] = torch.arange(32) - 15.5  # exact halves after scaling are rounded to even
    q, d = quantize_q16_act(lib, x)
    rq, rd = quantize_q16_act_reference(x)
    assert torch.equal(d, rd) and torch.equal(q, rq)
    assert int(q.abs().max()) == 32767 and float(d[1, 0]) == 0.0
    back = (q.float().view(5, 3, 32) * d[..., None]).view(5, 96)
    assert ((back - x).abs() <= d.repeat_interleave(32, 1) / 2 * (1 + 1e-6)).all()  # within half a step


# T = 1..9 tokens: one-token calls (decode), whole and partial 4-token tiles (prefill)
@pytest.mark.parametrize(("N", "K", "T"), [(33, 64, 1), (96, 128, 3), (40, 32, 4), (7, 96, 9), (64, 576, 2),
                                           (16, 544, 5), (24, 1536, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_q4_1_matmul_matches_reference(lib: Library, N: int, K: int, T: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(N * K + T)
    q = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
    d = torch.rand(N, K // 32, generator=g) * 0.05
    m = -torch.rand(N, K // 32, generator=g) * 0.4
    blocks = pack_q4_1(q, d, m)
    uq, ud, um = unpack_q4_1(blocks, K)
    assert torch.equal(uq, q) and torch.equal(ud, d.half().float()) and torch.equal(um, m.half().float())
    x = torch.randn(T, K, generator=g)
    bias = torch.randn(N, generator=g) if with_bias else None
    got = q4_1_matmul(lib, blocks, K, x, bias)
    want = q4_1_matmul_reference(blocks, K, x, bias)
    # Same integers and scales; float32 summation order differs from the float64 reference:
    # measured <= 2e-7 of the largest output.
    assert _rel(got, want) < 2e-6
    for t in range(T):  # each token alone (decode) gives exactly its row of the batch (prefill tiles)
        assert torch.equal(q4_1_matmul(lib, blocks, K, x[t : t + 1].contiguous(), bias), got[t : t + 1])


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_q4_blocks_from_gguf_bytes_dequantise_as_ggml(lib: Library, qtype: Q) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 128)).astype(np.float32)
    raw = quantize(w, qtype)
    blocks = q4_1_blocks(raw.reshape(-1), qtype, (48, 128))
    q, d, m = unpack_q4_1(blocks, 128)
    ours = (q.float().view(48, 4, 32) * d[..., None] + m[..., None]).view(48, 128)
    torch.testing.assert_close(ours, torch.from_numpy(dequantize(raw, qtype)), rtol=0, atol=0)
    # and the matmul on them is as close to the exact product as int16 activations allow
    x = torch.from_numpy(rng.standard_normal((3, 128)).astype(np.float32))
    exact = x.double() @ ours.double().T
    assert _rel(q4_1_matmul(lib, blocks, 128, x).double(), exact) < 1e-4  # measured ~3e-5


def test_q8_0_packing_equals_ggml_and_matmul_matches(lib: Library) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((70, 96)).astype(np.float32)
    blocks = pack_q8_0(torch.from_numpy(w))
    assert np.array_equal(blocks.numpy().reshape(-1), quantize(w, Q.Q8_0).reshape(-1))
    assert torch.equal(pack_q8_0(dequantize_q8_0(blocks, 96)), blocks)  # re-quantising is the identity
    x = torch.from_numpy(rng.standard_normal((4, 96)).astype(np.float32))
    got = q8_0_matmul(lib, blocks, 96, x)
    assert _rel(got, q8_0_matmul_reference(blocks, 96, x)) < 2e-6  # float32 activations: order only


def test_bad_shapes_are_refused(lib: Library) -> None:
    blocks = pack_q4_1(torch.zeros(32, 64, dtype=torch.uint8), torch.ones(32, 2), torch.zeros(32, 2))
    with pytest.raises(ValueError, match="float32"):
        q4_1_matmul(lib, blocks, 64, torch.zeros(1, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[T, 64\]"):
        q4_1_matmul(lib, blocks, 64, torch.zeros(1, 32))
    with pytest.raises(ValueError, match="K % 32"):
        pack_q4_1(torch.zeros(4, 40, dtype=torch.uint8), torch.ones(4, 1), torch.zeros(4, 1))


def test_portable_build_without_simd_matches_too(tmp_path: Path) -> None:
    """CPUs without AVX2/FMA/F16C (and other architectures) get the C file's plain loops: build that variant
    (no -march=native) and check it against the same references."""
    out = tmp_path / "omni_cpu_portable.so"
    try:
        _compile(os.environ.get("CC") or "cc", _BASE_FLAGS, out)
    except KernelBuildError as e:
        pytest.skip(f"no C compiler here: {e}")
    portable = Library(out)
    if portable.simd:
        pytest.skip("this compiler enables AVX2, FMA and F16C by default: no portable variant to test")
    g = torch.Generator().manual_seed(5)
    N, K, T = 40, 96, 5
    blocks = pack_q4_1(torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g),
                       torch.rand(N, K // 32, generator=g) * 0.05, -torch.rand(N, K // 32, generator=g) * 0.4)
    x = torch.randn(T, K, generator=g) * torch.logspace(-2, 2, K)
    q, d = quantize_q16_act(portable, x)
    rq, rd = quantize_q16_act_reference(x)
    assert torch.equal(d, rd) and torch.equal(q, rq)
    bias = torch.randn(N, generator=g)
    assert _rel(q4_1_matmul(portable, blocks, K, x, bias), q4_1_matmul_reference(blocks, K, x, bias)) < 2e-6
    head = pack_q8_0(torch.randn(N, K, generator=g))
    assert _rel(q8_0_matmul(portable, head, K, x), q8_0_matmul_reference(head, K, x)) < 2e-6
    # float16 conversions by bit arithmetic, bit-exact with torch (tests/kernels/test_decode_step.py)
    from tests.kernels.test_decode_step import CONFIGS, _random_q4_model, check_f16_conversions

    check_f16_conversions(portable)
    # and whole decode steps on the plain loops (RMSNorm, rotary, attention over a float32 and a float16
    # cache, SiLU) against the per-layer path
    from omni.model.lm.kv_cache import CacheConfig

    model = _random_q4_model(CONFIGS["qwen2-bias-mrope"], seed=7)
    assert model.enable_fused_decode(portable)
    fused = model._fused
    for dtype in (torch.float32, torch.float16):
        cache = CacheConfig(sinks=2, window=9, chunk=4, dtype=dtype)
        a, b = model.init_state(cache), model.init_state(cache)
        ids = torch.randint(0, 80, (1, 16), generator=g)
        model(a, input_ids=ids[:, :4])
        model(b, input_ids=ids[:, :4])
        for i in range(4, 16):  # past the wrap at 11 tokens
            la = model(a, input_ids=ids[:, i : i + 1]).logits
            model._fused = None
            lb = model(b, input_ids=ids[:, i : i + 1]).logits
            model._fused = fused
            assert la is not None and lb is not None
            assert _rel(la, lb) < 2e-4  # as for the SIMD build (tests/kernels/test_decode_step.py)


def test_built_library_is_keyed_by_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgraded omni_cpu.c or header beside it must not load a library built from older sources (nothing
    is compiled here)."""
    import omni.kernels.cpu as cpu

    built: list[Path] = []

    def fake_compile(cc: str, flags: list[str], out: Path) -> None:
        built.append(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"")

    source = tmp_path / "omni_cpu.c"
    source.write_text("int omni_version = 1;\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu, "SOURCE", source)
    monkeypatch.setattr(cpu, "_compile", fake_compile)
    monkeypatch.setattr(cpu.shutil, "which", lambda cc: "/usr/bin/" + cc)
    first = cpu.build()
    assert cpu.build() == first and built == [first]  # the same source: reused, not rebuilt
    source.write_text("int omni_version = 2;\n")
    second = cpu.build()
    assert second != first and built == [first, second]
    (tmp_path / "omni_part.c").write_text("/* an included part */\n")
    third = cpu.build()
    assert third not in (first, second) and built == [first, second, third]
