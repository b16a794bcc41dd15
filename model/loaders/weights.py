"""Turning a flat {name: tensor} of Llama/Qwen2 weights into a DecoderLM.

Both loaders (safetensors directories and GGUF files) produce reference-layout tensors
(`q_proj`, `k_proj`, ... in Hugging Face naming, rotate-half rotary layout); this module checks their
shapes against the config and fuses q/k/v and gate/up into the module's single projections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.config import DecoderConfig
from model.decoder import DecoderLM
from model.errors import CheckpointError
from model.layers.int4_linear import Int4Linear
from model.layers.rope import rope_inv_freq


@dataclass
class Q4Weight:
    """A 4-bit weight as stored in GGUF Q4_0/Q4_1 blocks: weight = d * q + m per group of 32 columns."""

    q: torch.Tensor  # [N, K] integers 0..15
    d: torch.Tensor  # [N, K / 32]
    m: torch.Tensor  # [N, K / 32]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q.shape[0], self.q.shape[1])

    def dense(self) -> torch.Tensor:
        g = self.q.shape[1] // self.d.shape[1]
        return self.q.float() * self.d.repeat_interleave(g, 1) + self.m.repeat_interleave(g, 1)

    @staticmethod
    def cat(parts: list[Q4Weight]) -> Q4Weight:
        return Q4Weight(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "d", "m")))


Weight = torch.Tensor | Q4Weight
# Getter for a reference-layout tensor by its name without prefix (e.g. "layers.0.self_attn.q_proj.weight");
# returns None when the tensor is absent.
TensorGetter = Callable[[str], "Weight | None"]


def expected_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Reference-layout names (under `model.`, plus `lm_head.weight`) and their shapes."""
    C, D = cfg.hidden_size, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg.vocab_size, C), "norm.weight": (C,)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (C,),
            p + "post_attention_layernorm.weight": (C,),
            p + "self_attn.q_proj.weight": (cfg.num_heads * D, C),
            p + "self_attn.k_proj.weight": (cfg.num_kv_heads * D, C),
            p + "self_attn.v_proj.weight": (cfg.num_kv_heads * D, C),
            p + "self_attn.o_proj.weight": (C, cfg.num_heads * D),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, C),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, C),
            p + "mlp.down_proj.weight": (C, cfg.intermediate_size),
        }
        if cfg.qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (cfg.num_heads * D,),
                p + "self_attn.k_proj.bias": (cfg.num_kv_heads * D,),
                p + "self_attn.v_proj.bias": (cfg.num_kv_heads * D,),
            }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    return shapes


def build_decoder(
    cfg: DecoderConfig, get: TensorGetter, dtype: torch.dtype, device: str | torch.device, where: str,
    int4: bool = False, embed_dtype: torch.dtype | None = None,
) -> DecoderLM:
    """Build a DecoderLM from reference-layout tensors without a random initialisation pass.

    int4: projections whose weights arrive as Q4Weight run as Int4Linear (CPU only); otherwise every
    weight is expanded to `dtype`. embed_dtype: the output head also gets a copy in this (narrower) dtype
    for scoring the vocabulary (the head is the largest matrix of a small model; see DecoderLM.head).
    """
    shapes = expected_shapes(cfg)
    tensors: dict[str, Weight] = {}
    for name, shape in shapes.items():
        t = get(name)
        if t is None:
            raise CheckpointError(f"{where}: tensor {name!r} is missing (expected shape {list(shape)})")
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} from the config"
            )
        if isinstance(t, Q4Weight) and not (int4 and name.startswith("layers.")):
            t = t.dense()
        tensors[name] = t if isinstance(t, Q4Weight) else t.to(device=device, dtype=dtype)
    state: dict[str, Weight] = {"embed_tokens.weight": tensors.pop("embed_tokens.weight"),
                                "norm.weight": tensors.pop("norm.weight")}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = tensors.pop("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            state[p + norm] = tensors.pop(p + norm)
        state[a + "qkv_proj.weight"] = _fuse([tensors.pop(a + f"{n}_proj.weight") for n in "qkv"], dtype, device)
        if cfg.qkv_bias:
            state[a + "qkv_proj.bias"] = torch.cat([_dense(tensors.pop(a + f"{n}_proj.bias")) for n in "qkv"])
        state[a + "o_proj.weight"] = tensors.pop(a + "o_proj.weight")
        state[m + "gate_up_proj.weight"] = _fuse([tensors.pop(m + "gate_proj.weight"),
                                                  tensors.pop(m + "up_proj.weight")], dtype, device)
        state[m + "down_proj.weight"] = tensors.pop(m + "down_proj.weight")
    with torch.device("meta"):
        model = DecoderLM(cfg)
    dense: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if isinstance(w, Q4Weight):
            path = name.removesuffix(".weight")
            bias = state.get(path + ".bias")
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child,
                    Int4Linear(w.q, w.d, w.m, bias=bias if isinstance(bias, torch.Tensor) else None))
        else:
            dense[name] = w
    for name in [n for n in dense if n.endswith(".bias") and isinstance(state.get(n[:-5] + ".weight"), Q4Weight)]:
        del dense[name]
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    int4_buffers = {n for n, _ in model.named_buffers() if n.endswith((".packed", ".scales_zeros"))}
    if unexpected or set(missing) - int4_buffers:
        raise CheckpointError(f"{where}: internal mapping error: missing {missing}, unexpected {unexpected}")
    model.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta).to(device)  # the meta-built buffer is empty
    if embed_dtype is not None:
        model.use_narrow_head(embed_dtype)
    return model.eval()


def _dense(w: Weight) -> torch.Tensor:
    return w.dense() if isinstance(w, Q4Weight) else w


def _fuse(parts: list[Weight], dtype: torch.dtype, device: str | torch.device) -> Weight:
    """Concatenate projections along their output rows, staying 4-bit when every part is."""
    if all(isinstance(p, Q4Weight) for p in parts):
        return Q4Weight.cat([p for p in parts if isinstance(p, Q4Weight)])
    return torch.cat([_dense(p).to(device=device, dtype=dtype) for p in parts])
