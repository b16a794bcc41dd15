"""Loading a llama- or qwen2-architecture GGUF file: config, dequantised weights, tokenizer, template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from omni.kernels.cpu import library
from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM
from omni.model.loaders.gguf_file import GGUFFile
from omni.model.loaders.gguf_quants import Q4_TYPES, q4_1_blocks
from omni.model.loaders.weights import Q4Weight, Weight, build_decoder, expected_shapes

_SUPPORTED_ARCHS = ("llama", "qwen2")
# GGUF tensor names -> reference names (per layer: blk.N.<gguf> -> layers.N.<reference>).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                 "output.weight": "lm_head.weight"}


def gguf_config(f: GGUFFile) -> DecoderConfig:
    meta = f.metadata
    arch = meta.get("general.architecture")
    if arch not in _SUPPORTED_ARCHS:
        raise CheckpointError(f"{f.path}: unsupported architecture {arch!r}; supported: {', '.join(_SUPPORTED_ARCHS)}")

    def need(key: str) -> Any:
        if f"{arch}.{key}" not in meta:
            raise CheckpointError(f"{f.path}: metadata {arch}.{key} is missing")
        return meta[f"{arch}.{key}"]

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise CheckpointError(f"{f.path}: rope scaling {scaling!r} is not supported")
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens else 0))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    try:
        return DecoderConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")), num_heads=heads,
            num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
            head_dim=int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
            qkv_bias=arch == "qwen2", tie_word_embeddings="output.weight" not in f.tensors, architecture=arch,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_ids=(eos,) if eos is not None else (),
        )
    except ConfigError as e:
        raise CheckpointError(f"{f.path}: {e}") from None


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> rotate-half layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf_decoder(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str = "cpu",
    gguf: GGUFFile | None = None, int4: bool = False, embed_dtype: torch.dtype | None = None,
) -> DecoderLM:
    """int4: keep Q4_0/Q4_1 projection weights 4-bit (CPU only, see build_decoder) instead of expanding them."""
    f = gguf or GGUFFile(Path(path))
    int4 = int4 and str(device) == "cpu" and (library() is not None or hasattr(torch, "_weight_int4pack_mm_for_cpu"))
    cfg = gguf_config(f)
    to_gguf = {ref: g for g, ref in _GLOBAL_NAMES.items()}
    for i in range(cfg.num_layers):
        to_gguf |= {f"layers.{i}.{ref}": f"blk.{i}.{g}" for g, ref in _LAYER_NAMES.items()}
    bar = tqdm(total=len(expected_shapes(cfg)), desc=f"loading {f.path.name}", unit="tensor", disable=None,
               leave=False)

    def get(name: str) -> Weight | None:
        bar.update(1)
        gname = to_gguf.get(name)
        if gname is None or gname not in f.tensors:
            return None
        t = f.tensors[gname]
        w: Weight
        if int4 and t.qtype in Q4_TYPES and len(t.shape) == 2:
            w = Q4Weight(q4_1_blocks(f.raw(gname), t.qtype, (t.shape[0], t.shape[1])), t.shape[1])
        else:
            w = f.dequantize(gname)
        if cfg.architecture == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_heads if "attn_q" in gname else cfg.num_kv_heads
            w = w.map_rows(lambda b: _unpermute(b, heads)) if isinstance(w, Q4Weight) else \
                _unpermute(w, heads)
        return w

    try:
        return build_decoder(cfg, get, dtype, device, str(f.path), int4=int4, embed_dtype=embed_dtype)
    finally:
        bar.close()
