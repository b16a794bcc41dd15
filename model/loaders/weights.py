"""Turning a flat {name: tensor} of Llama/Qwen2 weights into a DecoderLM.

Both loaders (safetensors directories and GGUF files) produce reference-layout tensors
(`q_proj`, `k_proj`, ... in Hugging Face naming, rotate-half rotary layout); this module checks their
shapes against the config and fuses q/k/v and gate/up into the module's single projections.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model.config import DecoderConfig
from model.decoder import DecoderLM
from model.errors import CheckpointError
from model.layers.rope import rope_inv_freq

# Getter for a reference-layout tensor by its name without prefix (e.g. "layers.0.self_attn.q_proj.weight");
# returns None when the tensor is absent.
TensorGetter = Callable[[str], "torch.Tensor | None"]


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
    cfg: DecoderConfig, get: TensorGetter, dtype: torch.dtype, device: str | torch.device, where: str
) -> DecoderLM:
    """Build a DecoderLM from reference-layout tensors without a random initialisation pass."""
    shapes = expected_shapes(cfg)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        t = get(name)
        if t is None:
            raise CheckpointError(f"{where}: tensor {name!r} is missing (expected shape {list(shape)})")
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} from the config"
            )
        tensors[name] = t.to(device=device, dtype=dtype)
    state: dict[str, torch.Tensor] = {
        "embed_tokens.weight": tensors["embed_tokens.weight"],
        "norm.weight": tensors["norm.weight"],
    }
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = tensors["lm_head.weight"]
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        state[p + "input_layernorm.weight"] = tensors[p + "input_layernorm.weight"]
        state[p + "post_attention_layernorm.weight"] = tensors[p + "post_attention_layernorm.weight"]
        state[a + "qkv_proj.weight"] = torch.cat([tensors[a + f"{n}_proj.weight"] for n in "qkv"])
        if cfg.qkv_bias:
            state[a + "qkv_proj.bias"] = torch.cat([tensors[a + f"{n}_proj.bias"] for n in "qkv"])
        state[a + "o_proj.weight"] = tensors[a + "o_proj.weight"]
        m = p + "mlp."
        state[m + "gate_up_proj.weight"] = torch.cat([tensors[m + "gate_proj.weight"], tensors[m + "up_proj.weight"]])
        state[m + "down_proj.weight"] = tensors[m + "down_proj.weight"]
        for name in [k for k in tensors if k.startswith(p)]:
            del tensors[name]  # free the unfused copies as we go: peak memory ~ one model, not two
    with torch.device("meta"):
        model = DecoderLM(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta).to(device)  # the meta-built buffer is empty
    return model.eval()
