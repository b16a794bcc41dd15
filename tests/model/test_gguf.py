"""GGUF loading: dequantisation, tensor mapping and q/k un-permutation, and the packaged SmolLM2 file
against transformers loading the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize

from omni.model.errors import CheckpointError
from omni.model.loaders.gguf_file import GGUFFile
from omni.model.loaders.gguf_loader import load_gguf_decoder
from omni.model.loaders.gguf_quants import dequantize_blocks
from tests.model.tiny_hf import make_tiny_hf


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_fast_dequantisation_is_bit_exact_with_gguf(qtype: Q) -> None:
    x = np.random.default_rng(0).standard_normal((24, 96)).astype(np.float32) * 3
    raw = quantize(x, qtype)
    want = dequantize(raw, qtype)
    got = dequantize_blocks(raw.reshape(-1), qtype, (24, 96)).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - x).max() < 0.5 * np.abs(x).max()  # it is a quantisation of x, not garbage


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter layout for q/k rows (the inverse of what our loader undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Which ggml type each tensor is written in: every supported type appears.
TYPES = {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.F16, "ffn_gate": Q.Q4_1,
         "ffn_up": Q.Q8_0, "ffn_down": Q.Q4_0, "token_embd": Q.F16, "output": Q.Q8_0}
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


K_BLOCK_BYTES = {Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}


def random_k_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Valid K-quant super-blocks with random codes (gguf can dequantise K-quants but not make them).

    The f16 scales are drawn small (<= 2e-3, Q6_K 2e-4) so that the weights stay O(1): d * 63 * 15 ~ 1.9.
    """
    size = K_BLOCK_BYTES[qtype]
    raw = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)

    def f16(high: float) -> np.ndarray:
        return rng.uniform(0, high, (raw.shape[0], 1)).astype(np.float16).view(np.uint8)

    if qtype == Q.Q6_K:
        raw[:, 208:210] = f16(2e-4)
    else:
        raw[:, 0:2], raw[:, 2:4] = f16(2e-3), f16(2e-3)
    return raw.reshape(rows, -1)


def _write_tiny_gguf(tmp: Path, arch: str = "llama", types: dict[str, Q] = TYPES,
                     hidden: int = 64) -> tuple[object, Path]:
    ref, _ = make_tiny_hf(tmp, "llama", vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    rng = np.random.default_rng(1)
    path = tmp / "tiny.gguf"
    w = GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(64)
    stored: dict[str, torch.Tensor] = {}

    def put(gname: str, hf: str, kind: str, heads: int = 0) -> None:
        x = sd[hf].astype(np.float32)
        if heads:
            x = _permute(x, heads)
        qtype = types.get(kind, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(gname, x)
            back = x
        elif qtype == Q.F16:
            w.add_tensor(gname, x.astype(np.float16))
            back = x.astype(np.float16).astype(np.float32)
        else:
            raw = random_k_blocks(*x.shape, qtype, rng) if qtype in K_BLOCK_BYTES else quantize(x, qtype)
            w.add_tensor(gname, raw, raw_dtype=qtype)
            back = dequantize(raw, qtype)
        if heads:  # what the reference should hold: the stored values in its own (un-permuted) layout
            back = back.reshape(heads, back.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(back.shape)
        stored[hf] = torch.from_numpy(np.ascontiguousarray(back))

    put("token_embd.weight", "model.embed_tokens.weight", "token_embd")
    put("output_norm.weight", "model.norm.weight", "norm")
    put("output.weight", "lm_head.weight", "output")
    for i in range(2):
        for g, hf in HF_NAMES.items():
            heads = 4 if g == "attn_q" else 2 if g == "attn_k" else 0
            put(f"blk.{i}.{g}.weight", f"model.layers.{i}.{hf}.weight", g, heads)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref.load_state_dict(stored)  # type: ignore[attr-defined]
    return ref, path


def test_tiny_llama_gguf_of_every_type_matches_transformers(tmp_path: Path) -> None:
    ref, path = _write_tiny_gguf(tmp_path)
    ours = load_gguf_decoder(path, dtype=torch.float32)
    ids = torch.randint(0, 64, (1, 17))
    with torch.no_grad():
        want = ref(ids).logits  # type: ignore[operator]
    got = ours(ours.init_state(), input_ids=ids, logits="all").logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quant_dequantisation_is_bit_exact_with_gguf(qtype: Q) -> None:
    raw = random_k_blocks(6, 512, qtype, np.random.default_rng(0))
    want = dequantize(raw, qtype)
    got = dequantize_blocks(raw.reshape(-1), qtype, (6, 512)).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0.1  # the codes reached the output (not all-zero scales)


# A Q4_K_M-style mix, as llama.cpp's quantiser writes it: Q4_K for most projections, Q6_K for attn_v,
# ffn_down and the head, Q5_K where a Q5_K_M file would have it; embeddings Q4_K.
K_MIX = {"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q4_K, "ffn_gate": Q.Q4_K,
         "ffn_up": Q.Q5_K, "ffn_down": Q.Q6_K, "token_embd": Q.Q4_K, "output": Q.Q6_K}


def test_k_quant_mix_gguf_matches_transformers(tmp_path: Path) -> None:
    ref, path = _write_tiny_gguf(tmp_path, types=K_MIX, hidden=256)  # K-quant rows are multiples of 256
    ours = load_gguf_decoder(path, dtype=torch.float32)
    ids = torch.randint(0, 64, (1, 17))
    with torch.no_grad():
        want = ref(ids).logits  # type: ignore[operator]
    got = ours(ours.init_state(), input_ids=ids, logits="all").logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # measured 1.5e-6 with logits up to 11.6


def test_corrupt_and_unsupported_gguf_files_name_the_problem(tmp_path: Path) -> None:
    _, path = _write_tiny_gguf(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        GGUFFile(cut)
    header_cut = tmp_path / "header.gguf"
    header_cut.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        GGUFFile(header_cut)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        GGUFFile(bad)
    other = tmp_path / "other.gguf"
    w = GGUFWriter(str(other), "bert")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="unsupported architecture 'bert'"):
        load_gguf_decoder(other)
