"""Turning a flat {name: tensor} of Llama/Qwen2 weights into a DecoderLM.

Both loaders (safetensors directories and GGUF files) produce reference-layout tensors
(`q_proj`, `k_proj`, ... in Hugging Face naming, rotate-half rotary layout); this module checks their
shapes against the config and fuses q/k/v and gate/up into the module's single projections.

Qwen3-MoE layers (Qwen3-Omni): `self_attn.q_norm` / `k_norm` [head_dim], the router `mlp.gate` [E, C], the
experts as released (`mlp.experts.{e}.{gate,up,down}_proj.weight`, unfused per expert: what the checkpoint and
transformers' save_pretrained hold) or in transformers' fused in-memory form (`mlp.experts.gate_up_proj`
[E, 2I, C], `mlp.experts.down_proj` [E, C, I]); both are stacked into the module's [E, ...] parameters. A
shared expert has `mlp.shared_expert.{gate,up,down}_proj` and its gate `mlp.shared_expert_gate` [1, C].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from omni.kernels.cpu import library
from omni.kernels.q4_matmul import dequantize_q4_1, unpack_q4_1
from omni.model.errors import CheckpointError
from omni.model.layers.int4_linear import Int4Linear, Q4Linear
from omni.model.layers.rope import rope_inv_freq
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM


@dataclass
class Q4Weight:
    """A 4-bit weight as stored in GGUF Q4_0/Q4_1 files, in Q4_1 blocks: weight = d * q + m per 32 columns."""

    blocks: torch.Tensor  # [N, K/32 * 20] uint8 (layout: omni/kernels/q4_matmul.py)
    in_features: int  # K

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [N, K] uint8 0..15, d [N, K/32], m [N, K/32])."""
        return unpack_q4_1(self.blocks, self.in_features)

    def dense(self) -> torch.Tensor:
        return dequantize_q4_1(self.blocks, self.in_features)

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Q4Weight:
        """The weight with its rows rearranged by `fn` (which must treat dim 0 as rows only)."""
        return Q4Weight(fn(self.blocks), self.in_features)

    @staticmethod
    def cat(parts: list[Q4Weight]) -> Q4Weight:
        return Q4Weight(torch.cat([p.blocks for p in parts]), parts[0].in_features)


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
        }
        if cfg.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)}
        if cfg.is_sparse_layer(i):
            shapes |= _moe_shapes(cfg, i)
        else:
            shapes |= _mlp_shapes(p + "mlp.", C, cfg.intermediate_size)
        if cfg.qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (cfg.num_heads * D,),
                p + "self_attn.k_proj.bias": (cfg.num_kv_heads * D,),
                p + "self_attn.v_proj.bias": (cfg.num_kv_heads * D,),
            }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    return shapes


def _mlp_shapes(p: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {p + "gate_proj.weight": (hidden, dim), p + "up_proj.weight": (hidden, dim),
            p + "down_proj.weight": (dim, hidden)}


def _moe_shapes(cfg: DecoderConfig, i: int) -> dict[str, tuple[int, ...]]:
    """A sparse layer's MLP tensors in the released (per-expert) layout."""
    m, C = f"layers.{i}.mlp.", cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {m + "gate.weight": (cfg.num_experts, C)}
    for e in range(cfg.num_experts):
        shapes |= _mlp_shapes(f"{m}experts.{e}.", C, cfg.moe_intermediate_size)
    if cfg.shared_expert_intermediate_size:
        shapes |= _mlp_shapes(m + "shared_expert.", C, cfg.shared_expert_intermediate_size)
        shapes[m + "shared_expert_gate.weight"] = (1, C)
    return shapes


def build_decoder(
    cfg: DecoderConfig, get: TensorGetter, dtype: torch.dtype, device: str | torch.device, where: str,
    int4: bool = False, embed_dtype: torch.dtype | None = None,
) -> DecoderLM:
    """Build a DecoderLM from reference-layout tensors without a random initialisation pass.

    int4: projections whose weights arrive as Q4Weight stay 4-bit (CPU only): Q4Linear on the C kernels
    (omni/kernels/cpu), which also run whole decode steps, or Int4Linear on torch's int4 GEMM where the kernels
    cannot be built; otherwise every weight is expanded to `dtype`. embed_dtype: the output head also gets
    a narrower copy for scoring the vocabulary (the head is the largest matrix of a small model; see
    DecoderLM.head): Q8_0 blocks when the 4-bit layers run on the C kernels, else this dtype.
    """
    lib = library() if int4 else None
    state = _fused_state(cfg, _checked_tensors(cfg, get, dtype, device, where, int4), dtype, device)
    with torch.device("meta"):
        model = DecoderLM(cfg)
    dense: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if isinstance(w, Q4Weight):
            path = name.removesuffix(".weight")
            bias = state.get(path + ".bias")
            parent, _, child = path.rpartition(".")
            b = bias if isinstance(bias, torch.Tensor) else None
            layer = Q4Linear(lib, w.blocks, w.in_features, bias=b) if lib is not None else \
                Int4Linear(*w.components(), bias=b)
            setattr(model.get_submodule(parent), child, layer)
        else:
            dense[name] = w
    for name in [n for n in dense if n.endswith(".bias") and isinstance(state.get(n[:-5] + ".weight"), Q4Weight)]:
        del dense[name]
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    int4_buffers = {f"{path}.{n}" for path, mod in model.named_modules() if isinstance(mod, Q4Linear | Int4Linear)
                    for n, _ in mod.named_buffers()}
    if unexpected or set(missing) - int4_buffers:
        raise CheckpointError(f"{where}: internal mapping error: missing {missing}, unexpected {unexpected}")
    model.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta).to(device)  # the meta-built buffer is empty
    if lib is not None:
        model.enable_fused_decode(lib)
    if embed_dtype is not None:
        model.use_narrow_head("q8_0" if lib is not None else embed_dtype, lib)
    return model.eval()


def _checked_tensors(
    cfg: DecoderConfig, get: TensorGetter, dtype: torch.dtype, device: str | torch.device, where: str, int4: bool
) -> dict[str, Weight]:
    """Every reference-layout tensor of `cfg`, its shape checked; Q4 weights stay 4-bit only in the layers
    when `int4`, the rest is expanded to `dtype` on `device`."""
    tensors: dict[str, Weight] = {}
    shapes = expected_shapes(cfg)
    for i in range(cfg.num_layers):
        if cfg.is_sparse_layer(i):
            tensors |= _stacked_experts(cfg, i, get, dtype, device, where)
            for e in range(cfg.num_experts):
                for n in ("gate", "up", "down"):
                    del shapes[f"layers.{i}.mlp.experts.{e}.{n}_proj.weight"]
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
    return tensors


def _stacked_experts(
    cfg: DecoderConfig, i: int, get: TensorGetter, dtype: torch.dtype, device: str | torch.device, where: str
) -> dict[str, Weight]:
    """Layer i's experts as `experts.gate_up_proj` [E, 2I, C] and `experts.down_proj` [E, C, I], from the
    per-expert tensors or, when the checkpoint has none, from transformers' fused ones."""
    p = f"layers.{i}.mlp.experts."
    E, I, C = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    first = get(p + "0.gate_proj.weight")
    if first is None:
        fused = {p + "gate_up_proj": (E, 2 * I, C), p + "down_proj": (E, C, I)}
        out: dict[str, Weight] = {}
        for name, shape in fused.items():
            t = get(name)
            if t is None:
                raise CheckpointError(f"{where}: tensor {p + '0.gate_proj.weight'!r} is missing (nor are the experts "
                                      f"stored fused as {name!r})")
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
            out[name] = _dense(t).to(device=device, dtype=dtype)
        return out
    gate_up = torch.empty(E, 2 * I, C, dtype=dtype, device=device)
    down = torch.empty(E, C, I, dtype=dtype, device=device)
    for e in range(E):
        for n, dst in (("gate", gate_up[e, :I]), ("up", gate_up[e, I:]), ("down", down[e])):
            name = f"{p}{e}.{n}_proj.weight"
            t = first if (e, n) == (0, "gate") else get(name)
            if t is None:
                raise CheckpointError(f"{where}: tensor {name!r} is missing (expected shape {list(dst.shape)})")
            if t.shape != dst.shape:
                raise CheckpointError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(dst.shape)}")
            dst.copy_(_dense(t))
    return {p + "gate_up_proj": gate_up, p + "down_proj": down}


def _fused_state(
    cfg: DecoderConfig, tensors: dict[str, Weight], dtype: torch.dtype, device: str | torch.device
) -> dict[str, Weight]:
    """DecoderLM's state dict from reference-layout tensors: q/k/v and gate/up projections fused."""
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
        if cfg.qk_norm:
            for norm in ("q_norm.weight", "k_norm.weight"):
                state[a + norm] = tensors.pop(a + norm)
        if not cfg.is_sparse_layer(i):
            state |= _fused_mlp(tensors, m, dtype, device)
            continue
        for name in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"):
            state[m + name] = tensors.pop(m + name)
        if cfg.shared_expert_intermediate_size:
            state |= _fused_mlp(tensors, m + "shared_expert.", dtype, device)
            state[m + "shared_expert_gate.weight"] = tensors.pop(m + "shared_expert_gate.weight")
    return state


def _fused_mlp(tensors: dict[str, Weight], m: str, dtype: torch.dtype, device: str | torch.device) -> dict[str, Weight]:
    """A SwiGLU MLP's state under prefix m: gate and up fused into gate_up_proj."""
    return {m + "gate_up_proj.weight": _fuse([tensors.pop(m + "gate_proj.weight"), tensors.pop(m + "up_proj.weight")],
                                             dtype, device),
            m + "down_proj.weight": tensors.pop(m + "down_proj.weight")}


def _dense(w: Weight) -> torch.Tensor:
    return w.dense() if isinstance(w, Q4Weight) else w


def _fuse(parts: list[Weight], dtype: torch.dtype, device: str | torch.device) -> Weight:
    """Concatenate projections along their output rows, staying 4-bit when every part is."""
    if all(isinstance(p, Q4Weight) for p in parts):
        return Q4Weight.cat([p for p in parts if isinstance(p, Q4Weight)])
    return torch.cat([_dense(p).to(device=device, dtype=dtype) for p in parts])
