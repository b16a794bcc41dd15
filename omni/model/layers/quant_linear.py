"""Weight-only quantised linear layers for the GPU path, and `quantize_decoder` to swap them in at load.

- Int8Linear: per output channel int8 (omni/kernels/int8_matmul.py): 1 byte per weight instead of 2 (bf16), so a
  7B Thinker's 13 GB of projections read per decode token become ~6.6 GB.
- GroupInt4Linear: int4 per group of 128 with a bf16 scale and minimum (omni/kernels/int4_matmul.py): 0.53 bytes
  per weight, ~3.5 GB; fits a 12 GB GPU with room for the KV cache.

Both call the kernels' dispatch (Triton on CUDA tensors, the float32 eager reference elsewhere). The name
GroupInt4Linear keeps it apart from omni/model/layers/int4_linear.py's Int4Linear (torch's CPU int4 GEMM on
GGUF's 32-weight groups), which is a different format for a different device.

Embeddings, norms and the LM head stay in the model's dtype: the head is 0.5 B of the 7B model's weights,
but quantising it moves logits of close candidates, and `DecoderLM.head` already has its own narrow copy.

Mixture-of-experts layers (the Qwen3 family): the expert stacks become `QuantExperts` (int8 per expert and output
channel, or int4 groups, in omni/kernels/moe_matmul.py's `Int8ExpertWeights` / `Int4ExpertWeights`, run by the same
grouped matmul path as float experts) and a shared expert's projections become quantised linears; the router
(`gate`, [E, C]) and the shared-expert gate stay in the model's dtype, as routing picks among close scores.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from omni.kernels.int4_matmul import dequantize_int4, int4_matmul, quantize_int4
from omni.kernels.int8_matmul import dequantize_int8, int8_matmul, quantize_int8
from omni.kernels.moe_matmul import ExpertWeights, Int4ExpertWeights, Int8ExpertWeights, moe_experts
from omni.model.layers.mlp import Experts, GatedMLP, SparseMoE

QUANT_KINDS = ("int8", "int4")
INT4_GROUP = 128  # the kernel's default: 4 bytes of scale+min per 64 bytes of codes (6% overhead)


class Int8Linear(nn.Module):
    q: torch.Tensor  # [N, K] int8
    scale: torch.Tensor  # [N] float32
    bias: torch.Tensor | None  # [N] in the activation dtype

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N] in x's dtype
        return int8_matmul(x, self.q, self.scale, None if self.bias is None else self.bias.to(x.dtype))

    def dequantized(self) -> torch.Tensor:
        """The effective weight [N, K] in float32 (for tests and references)."""
        return dequantize_int8(self.q, self.scale)


class GroupInt4Linear(nn.Module):
    packed: torch.Tensor  # [N, K/2] uint8
    scale: torch.Tensor  # [N, K/group] bfloat16
    mins: torch.Tensor  # [N, K/group] bfloat16
    bias: torch.Tensor | None

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, group_size: int = INT4_GROUP,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("mins", mins)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = INT4_GROUP) -> GroupInt4Linear:
        packed, scale, mins = quantize_int4(linear.weight.detach(), group_size)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(packed, scale, mins, group_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return int4_matmul(x, self.packed, self.scale, self.mins, self.group_size, bias)

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.packed, self.scale, self.mins, self.group_size)


class QuantExperts(nn.Module):
    """`Experts` with weight-only quantised stacks (a stack whose K has no int4 group stays in its dtype). The
    tensors are buffers (so `.to()` and state_dict see them); `stack(name)` rebuilds the weight object."""

    def __init__(self, gate_up: ExpertWeights, down: ExpertWeights) -> None:
        super().__init__()
        self._kinds: dict[str, str] = {}
        self._groups: dict[str, int] = {}
        for name, w in (("gate_up", gate_up), ("down", down)):
            if isinstance(w, Int8ExpertWeights):
                self._kinds[name], tensors = "int8", {"q": w.q, "scale": w.scale}
            elif isinstance(w, Int4ExpertWeights):
                self._kinds[name], tensors = "int4", {"packed": w.packed, "scale": w.scale, "mins": w.mins}
                self._groups[name] = w.group_size
            else:
                self._kinds[name], tensors = "float", {"w": w}
            for key, t in tensors.items():
                self.register_buffer(f"{name}_{key}", t)

    @classmethod
    def from_experts(cls, experts: Experts, kind: str) -> QuantExperts:
        return cls(*(_quantize_stack(p.detach(), kind) for p in (experts.gate_up_proj, experts.down_proj)))

    def stack(self, name: str) -> ExpertWeights:
        """The "gate_up" or "down" stack as moe_experts takes it."""

        def buf(key: str) -> torch.Tensor:
            return cast(torch.Tensor, getattr(self, f"{name}_{key}"))

        kind = self._kinds[name]
        if kind == "int8":
            return Int8ExpertWeights(buf("q"), buf("scale"))
        if kind == "int4":
            return Int4ExpertWeights(buf("packed"), buf("scale"), buf("mins"), self._groups[name])
        return buf("w")

    @property
    def graph_unsafe(self) -> str | None:
        """Why a CUDA graph cannot capture this forward (omni/model/lm/cuda_graph.py `host_read_reason`), or None."""
        if "int4" in self._kinds.values():
            return "int4 experts read the routing offsets back to the host (Int4ExpertWeights.grouped)"
        return None

    def forward(self, x: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        return moe_experts(x, self.stack("gate_up"), self.stack("down"), top_idx, top_w)


def _quantize_stack(w: torch.Tensor, kind: str) -> ExpertWeights:
    if kind == "int8":
        return Int8ExpertWeights.quantize(w)
    group = int4_group_for(w.shape[2])
    return w if group is None else Int4ExpertWeights.quantize(w, group)


def int4_group_for(in_features: int) -> int | None:
    """The int4 group size for a projection with `in_features` inputs: 128, or the largest power of two
    >= 32 dividing it (tiny test models), None when none does (the layer stays unquantised)."""
    for g in (INT4_GROUP, 64, 32):  # the kernel needs groups of >= 32
        if in_features % g == 0:
            return g
    return None


def quantize_decoder(lm: nn.Module, kind: str) -> int:
    """Replace every projection (attention qkv/o, MLP gate_up/down; for a mixture-of-experts MLP its expert
    stacks and shared expert, see the module docstring) of a DecoderLM in place by its int8 or int4 weight-only
    version; returns how many were replaced (an expert stack counts once). Quantise once after loading bf16/fp32
    weights."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"quantisation must be one of {QUANT_KINDS}, got {kind!r}")
    replaced = 0
    for layer in lm.layers:  # type: ignore[union-attr]
        targets: list[tuple[nn.Module, str]] = [(layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj")]
        mlp = layer.mlp
        if isinstance(mlp, SparseMoE):
            if not isinstance(mlp.experts, Experts):
                raise ValueError(f"experts are already {type(mlp.experts).__name__}; quantise a bf16/fp32 checkpoint")
            mlp.experts = QuantExperts.from_experts(mlp.experts, kind)
            replaced += 1
            if isinstance(mlp.shared_expert, GatedMLP):
                targets += [(mlp.shared_expert, "gate_up_proj"), (mlp.shared_expert, "down_proj")]
        else:
            targets += [(mlp, "gate_up_proj"), (mlp, "down_proj")]
        for parent, name in targets:
            linear = getattr(parent, name)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{name} is already {type(linear).__name__}; quantise a bf16/fp32 checkpoint")
            if kind == "int8":
                setattr(parent, name, Int8Linear.from_linear(linear))
            else:
                group = int4_group_for(linear.in_features)
                if group is None:
                    continue
                setattr(parent, name, GroupInt4Linear.from_linear(linear, group))
            replaced += 1
    return replaced
