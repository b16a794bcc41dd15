"""Qwen3-Omni Code2Wav against transformers' Qwen3OmniMoeCode2Wav, and streaming against the whole decode.

The reference is a tiny random model (2 layers, sliding window 4, so 40 frames cross ten windows and the
stacked reach of 2 * 3 frames), re-initialised with fan-in scaling and its last conv scaled so the
waveform is mostly inside the clamp (otherwise +-1 everywhere would hide differences). It is saved with
save_pretrained and read by our loader under the released `code2wav.*` key names.

Tolerances: float64 is exact up to rounding (measured 7e-14 of the peak against transformers, 8e-14 streamed
against our whole decode), asserted at 1e-10. float32 differs by rounding amplified through SnakeBeta and the
1920x upsampling: measured 3.5e-5 of the peak against transformers and 4e-5 streamed; asserted at 5e-4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from omni.model.code2wav import Code2Wav, Code2WavConfig, StreamingCode2Wav, load_code2wav
from omni.model.errors import CheckpointError, ConfigError
from tests.model.encoder_reference import randomize_, rel_err

N = 40
TINY = dict(
    codebook_size=64, num_quantizers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=64, num_hidden_layers=2, sliding_window=4, decoder_dim=64,
)
# grouped KV heads, biased projections, 3 layers of window 3
VARIANT = TINY | dict(num_key_value_heads=2, attention_bias=True, num_hidden_layers=3, sliding_window=3)


def hf_code2wav(fields: dict[str, Any], seed: int) -> Any:
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    torch.manual_seed(seed)
    model = Qwen3OmniMoeCode2Wav(Qwen3OmniMoeCode2WavConfig(**fields)).eval().double()
    randomize_(model, seed)
    with torch.no_grad():  # pre-clamp waveform std 15 -> about 0.3
        pre = _pre_clamp(model, _codes(seed, fields["codebook_size"], fields["num_quantizers"]))
        for name, p in model.named_parameters():
            if name.startswith(f"decoder.{len(model.decoder) - 1}."):
                p.mul_(0.3 / float(pre.std()))
    return model


def _pre_clamp(model: Any, codes: torch.Tensor) -> torch.Tensor:
    h = model.code_embedding(codes + model.code_offset).mean(1)
    h = model.pre_transformer(inputs_embeds=h).last_hidden_state.transpose(1, 2)
    for stage in model.upsample:
        for m in stage:
            h = m(h)
    for m in model.decoder:
        h = m(h)
    return h


def _codes(seed: int, codebook: int = 64, quantizers: int = 4, n: int = N) -> torch.Tensor:
    return torch.randint(0, codebook, (1, quantizers, n), generator=torch.Generator().manual_seed(100 + seed))


def _save_and_load(ref: Any, directory: Path, dtype: torch.dtype) -> Code2Wav:
    """save_pretrained, then our loader on the tensors named as the released checkpoint names them."""
    ref.save_pretrained(directory, safe_serialization=True)
    cfg = Code2WavConfig.from_hf_config(json.loads((directory / "config.json").read_text()))
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            tensors |= {f"code2wav.{k}": h.get_tensor(k) for k in h.keys()}
    return load_code2wav(cfg, tensors, tensors.get, dtype=dtype)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Code2Wav]:
    ref = hf_code2wav(TINY, seed=0)
    return ref, _save_and_load(ref, tmp_path_factory.mktemp("c2w"), torch.float64)


@pytest.fixture(scope="module")
def whole(pair: tuple[Any, Code2Wav]) -> torch.Tensor:
    return pair[1](_codes(0))[0]


def test_config_round_trip_and_preset() -> None:
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig

    released = Code2WavConfig.from_name("qwen3-omni-30b-a3b")
    assert Code2WavConfig.from_hf_config(Qwen3OmniMoeCode2WavConfig().to_dict()) == released
    assert Code2WavConfig.from_hf_config({"code2wav_config": released.to_hf_config()}) == released
    assert (released.samples_per_frame, released.trailing_samples) == (1920, 555)
    assert released.samples_for(1) == 1365 and released.samples_for(0) == 0
    tiny = Code2WavConfig.from_hf_config(TINY)
    assert Qwen3OmniMoeCode2WavConfig(**tiny.to_hf_config()).to_dict() == Qwen3OmniMoeCode2WavConfig(**TINY).to_dict()
    with pytest.raises(ConfigError, match="unknown code2wav preset"):
        Code2WavConfig.from_name("qwen3-omni-7b")
    with pytest.raises(ConfigError, match="hidden_act"):
        Code2WavConfig(hidden_act="gelu")
    with pytest.raises(ConfigError, match="decoder_dim"):
        Code2WavConfig(decoder_dim=8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 5e-4)])
def test_whole_decode_equals_transformers(pair: tuple[Any, Code2Wav], dtype: torch.dtype, tol: float) -> None:
    ref, ours = pair
    codes = _codes(0)
    try:
        ref.to(dtype)
        ours.to(dtype)
        with torch.no_grad():
            want = ref(codes)[:, 0]
        got = ours(codes)
    finally:
        ref.double()
        ours.double()
    assert got.dtype == dtype and got.shape == want.shape == (1, N * 1920 - 555)
    assert float(want.abs().mean()) > 0.1 and float((want.abs() == 1).float().mean()) < 0.01  # not clamped flat
    assert rel_err(got, want) < tol, rel_err(got, want)


def test_variant_with_grouped_kv_and_bias(tmp_path: Path) -> None:
    ref = hf_code2wav(VARIANT, seed=1)
    ours = _save_and_load(ref, tmp_path, torch.float64)
    codes = _codes(1, n=17)
    with torch.no_grad():
        want = ref(codes)[:, 0]
    assert rel_err(ours(codes), want) < 1e-10


def _stream(model: Code2Wav, codes: torch.Tensor, first: int, chunk: int, pushes: list[int]) -> list[tuple[int, Any]]:
    """(frames pushed when the chunk came out, chunk) for `codes` [1, Q, N] pushed in pieces of `pushes`."""
    st = StreamingCode2Wav(model, first_chunk_frames=first, chunk_frames=chunk)
    state = st.init_state()
    out, at = [], 0
    for size in pushes:
        piece = codes[0, :, at : at + size]
        at += size
        out += [(at, c) for c in st.step(state, piece[:, 0] if size == 1 else piece)]
    assert at == codes.shape[-1]
    return out + [(-1, c) for c in st.flush(state)]


@pytest.mark.parametrize(
    "first,chunk,pushes",
    [
        (1, 1, [1] * N),  # frame by frame
        (2, 1, [1] * N),
        (4, 3, [1] * N),  # a 4-frame first chunk, then 3 frames per chunk, flush decodes the last frame
        (1, 5, [3, 1, 7, 2, 1, 11, 4, 1, 1, 9]),  # uneven pushes; a push larger than the chunk decodes all of it
    ],
)
def test_streaming_equals_whole_decode(
    pair: tuple[Any, Code2Wav], whole: torch.Tensor, first: int, chunk: int, pushes: list[int]
) -> None:
    chunks = _stream(pair[1], _codes(0), first, chunk, pushes)
    wav = torch.cat([c.samples for _, c in chunks])
    assert wav.shape == whole.shape
    assert (wav - whole).abs().max() < 1e-10
    assert [c.start for _, c in chunks] == [sum(c.samples.numel() for _, c in chunks[:i]) for i in range(len(chunks))]
    pushed_at_first = next(at for at in (sum(pushes[: i + 1]) for i in range(len(pushes))) if at >= first)
    assert chunks[0][0] == pushed_at_first
    assert chunks[0][1].samples.numel() == pushed_at_first * 1920 - 555


def test_prefix_decode_is_the_whole_decodes_prefix(pair: tuple[Any, Code2Wav], whole: torch.Tensor) -> None:
    for n in (1, 5, 23):
        assert (pair[1](_codes(0)[..., :n])[0] - whole[: n * 1920 - 555]).abs().max() < 1e-10


def test_float32_streaming_close_to_whole(pair: tuple[Any, Code2Wav]) -> None:
    """float32: the same rounding bound as the transformers comparison."""
    ours = pair[1]
    try:
        ours.float()
        whole = ours(_codes(0))[0]
        wav = torch.cat([c.samples for _, c in _stream(ours, _codes(0), 1, 1, [1] * N)])
    finally:
        ours.double()
    assert wav.dtype == torch.float32 and wav.shape == whole.shape
    assert rel_err(wav, whole) < 5e-4, rel_err(wav, whole)


def test_interleaved_streams_do_not_share_state(pair: tuple[Any, Code2Wav], whole: torch.Tensor) -> None:
    ours = pair[1]
    other_codes = _codes(7)
    st = StreamingCode2Wav(ours)
    a, b = st.init_state(), st.init_state()
    wa, wb = [], []
    for i in range(N):
        wa += st.step(a, _codes(0)[0, :, i])
        wb += st.step(b, other_codes[0, :, i])
    assert (torch.cat([c.samples for c in wa]) - whole).abs().max() < 1e-10
    assert (torch.cat([c.samples for c in wb]) - ours(other_codes)[0]).abs().max() < 1e-10


def test_transformers_chunked_decode_is_not_the_whole_decode(pair: tuple[Any, Code2Wav], whole: torch.Tensor) -> None:
    """Why we cache instead: transformers' chunked_decode (re-decode each chunk with left context) drops the
    555 samples each chunk's decode still holds back, and is approximate unless the left context covers the
    reach of the transformer (2 * (4 - 1) = 6 frames here, 568 for the released 8 x 72) plus the convs'."""
    ref, codes = pair[0], _codes(0)
    with torch.no_grad():
        long_ctx = ref.chunked_decode(codes, chunk_size=10, left_context_size=25)[0, 0]
        short_ctx = ref.chunked_decode(codes, chunk_size=10, left_context_size=6)[0, 0]
    assert long_ctx.numel() == short_ctx.numel() == N * 1920 - 4 * 555 < whole.numel()
    piece = 19200 - 555  # chunk k holds whole[k*19200 : (k+1)*19200 - 555]: a 555-sample hole at each boundary
    for k in range(4):
        want = whole[k * 19200 : (k + 1) * 19200 - 555]
        err = rel_err(long_ctx[k * piece : (k + 1) * piece], want)
        # chunks 0-2 re-decode from frame 0 (exact); chunk 3 from frame 5, its positions shifted, so the
        # reference's float32 rotary angles round differently (measured 8e-6)
        assert err < (1e-10 if k < 3 else 1e-4), (k, err)
        if k:  # 6 frames of context: measured 0.46-0.70 of the peak off
            assert rel_err(short_ctx[k * piece : (k + 1) * piece], want) > 0.1


def test_loader_names_missing_and_misshaped_tensors(pair: tuple[Any, Code2Wav]) -> None:
    cfg = pair[1].cfg
    tensors = {f"code2wav.{k}": v for k, v in pair[1].state_dict().items()}
    with pytest.raises(CheckpointError, match="no code2wav"):
        load_code2wav(cfg, [], tensors.get)
    short = dict(tensors)
    del short["code2wav.pre_transformer.layers.1.mlp_layer_scale.scale"]
    with pytest.raises(CheckpointError, match=r"missing 1 of .*code2wav\.pre_transformer\.layers\.1\.mlp_layer_scale"):
        load_code2wav(cfg, short, short.get)
    bad = tensors | {"code2wav.decoder.2.block.1.conv.weight": torch.zeros(3, 3, 3)}
    with pytest.raises(CheckpointError, match=r"'code2wav\.decoder\.2\.block\.1\.conv\.weight' has shape \[3, 3, 3\]"):
        load_code2wav(cfg, bad, bad.get)
    extra = tensors | {"code2wav.decoder.9.conv.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected"):
        load_code2wav(cfg, extra, extra.get)


def test_bad_codes_and_stream_misuse(pair: tuple[Any, Code2Wav]) -> None:
    ours = pair[1]
    with pytest.raises(ValueError, match=r"\[batch, 4 codebooks, frames\]"):
        ours(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        ours(torch.full((1, 4, 2), 64))
    with pytest.raises(ValueError, match="integers"):
        ours(torch.zeros(1, 4, 2))
    st = StreamingCode2Wav(ours, first_chunk_frames=3)
    state = st.init_state()
    assert st.step(state, _codes(0)[0, :, :2]) == []
    (tail,) = st.flush(state)
    assert tail.start == 0 and tail.samples.numel() == 2 * 1920 - 555
    with pytest.raises(ValueError, match="after flush"):
        st.step(state, _codes(0)[0, :, 0])
    assert st.flush(st.init_state()) == []
    with pytest.raises(ValueError, match="at least one frame"):
        StreamingCode2Wav(ours, first_chunk_frames=0)


def test_released_shape_has_the_released_key_names_and_shapes() -> None:
    """The preset, built on the meta device (no memory), against transformers' default (released) model."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    with torch.device("meta"):
        ours = Code2Wav(Code2WavConfig.from_name("qwen3-omni-30b-a3b"))
        ref = Qwen3OmniMoeCode2Wav(Qwen3OmniMoeCode2WavConfig())
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert want["code_embedding.weight"] == (16 * 2048, 1024)
    assert want["decoder.1.block.1.conv.weight"] == (1536, 768, 16)
