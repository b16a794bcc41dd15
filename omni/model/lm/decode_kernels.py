"""The one-token decode step on the GPU kernels (omni/kernels/*.py), for one session or many stacked ones.

Per layer: fused residual add + RMSNorm, the qkv projection (dense, int8 or int4), q and k rotated in place
(M-RoPE included, with the shifted sink query once the ring has wrapped), the new K/V written at each row's
slot, split-K decode attention over the sink + ring cache, o projection, add + RMSNorm, gate_up, SiLU gate,
down. Against the eager layer loop that is 2 launches fewer per norm (5 -> 1 in bf16), no rotary tables
(3 -> 1 launch for q and k together) and no attention mask materialised per step.

Every row b is a session with its own cache row, token index (lengths[b] - 1), position and sink shift,
so the same function runs a single session (B = 1) and a batch of sessions stacked in one cache
(omni/model/lm/batch.py). It reads nothing back to the host and every shape depends only on B and the cache's
size, so it can be captured in a CUDA graph (omni/model/lm/cuda_graph.py).

`KernelOps` picks the implementations: `DISPATCH_OPS` (each op's dispatch: Triton on CUDA tensors, the eager
reference elsewhere), `REFERENCE_OPS` (the eager references everywhere) or `TRITON_OPS` (the Triton launchers
whatever the device: on the CPU they run only under TRITON_INTERPRET=1, which is how the tests exercise the
GPU path without a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from omni.kernels import decode_attention as attn_op
from omni.kernels import int4_matmul as int4_op
from omni.kernels import int8_matmul as int8_op
from omni.kernels import rms_norm as norm_op
from omni.kernels import rope as rope_op
from omni.kernels import silu_gate as gate_op
from omni.model.layers.quant_linear import GroupInt4Linear, Int8Linear


@dataclass(frozen=True)
class KernelOps:
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope_qk_: Callable[..., None]
    decode_attention: Callable[..., torch.Tensor]
    silu_gate: Callable[..., torch.Tensor]
    int8_matmul: Callable[..., torch.Tensor]
    int4_matmul: Callable[..., torch.Tensor]


DISPATCH_OPS = KernelOps(norm_op.add_rms_norm, rope_op.rope_qk_, attn_op.decode_attention, gate_op.silu_gate,
                         int8_op.int8_matmul, int4_op.int4_matmul)
REFERENCE_OPS = KernelOps(norm_op.add_rms_norm_reference, rope_op.rope_qk_reference_,
                          attn_op.decode_attention_reference, gate_op.silu_gate_reference,
                          int8_op.int8_matmul_reference, int4_op.int4_matmul_reference)
TRITON_OPS = KernelOps(norm_op.add_rms_norm_triton, rope_op.rope_qk_triton_, attn_op.decode_attention_triton,
                       gate_op.silu_gate_triton, int8_op.int8_matmul_triton, int4_op.int4_matmul_triton)


@dataclass
class StepInputs:
    """One decode step of B rows (sessions), all on the model's device."""

    x: torch.Tensor  # [B, 1, C] input embeddings
    positions: torch.Tensor  # [B, 1] or [3, B, 1] long
    k: torch.Tensor  # [L, B, Hkv, S, D] the rows' caches (views are fine)
    v: torch.Tensor  # [L, B, Hkv, S, D]
    slot_token: torch.Tensor  # [S] or [B, S]: which token each slot holds, this step's already registered
    slots: torch.Tensor  # [B] long: the slot each row's new K/V goes to
    lengths: torch.Tensor  # [B] long: tokens written per row, this one included
    sink_shift: torch.Tensor | None  # [B, 1] long, or None while no row's ring has wrapped
    sinks: int
    window: int


def project(ops: KernelOps, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T through `ops` for the quantised layers, the module itself otherwise (F.linear: cuBLAS)."""
    if isinstance(linear, Int8Linear):
        return ops.int8_matmul(x, linear.q, linear.scale, None if linear.bias is None else linear.bias.to(x.dtype))
    if isinstance(linear, GroupInt4Linear):
        bias = None if linear.bias is None else linear.bias.to(x.dtype)
        return ops.int4_matmul(x, linear.packed, linear.scale, linear.mins, linear.group_size, bias)
    return cast(torch.Tensor, linear(x))


def _attention(ops: KernelOps, layer: Any, model: Any, i: int, normed: torch.Tensor,
               inp: StepInputs) -> torch.Tensor:
    attn = layer.self_attn
    B = normed.shape[0]
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    qkv = project(ops, attn.qkv_proj, normed)  # [B, 1, (H + 2 Hkv) D]
    q = qkv[..., : H * D].view(B, 1, H, D)
    k = qkv[..., H * D : (H + Hkv) * D].view(B, 1, Hkv, D)
    v = qkv[..., (H + Hkv) * D :].view(B, 1, Hkv, D)
    if attn.q_norm is not None:  # per-head RMSNorm of q and k (Qwen3) before the rotation
        eps = model.cfg.rms_norm_eps
        q = ops.add_rms_norm(q, None, attn.q_norm.weight, eps)[0]
        k = ops.add_rms_norm(k, None, attn.k_norm.weight, eps)[0]
    q_sink = None if inp.sink_shift is None else torch.empty_like(q)
    ops.rope_qk_(q, k, inp.positions, model.inv_freq, model.cfg.mrope_section, q_sink, inp.sink_shift,
                 model.cfg.mrope_interleaved)
    rows = torch.arange(B, device=normed.device)
    inp.k[i][rows, :, inp.slots] = k[:, 0].to(inp.k.dtype)  # [B, Hkv, D] at each row's own slot
    inp.v[i][rows, :, inp.slots] = v[:, 0].to(inp.v.dtype)
    o = ops.decode_attention(q[:, 0], inp.k[i], inp.v[i], inp.lengths, inp.slot_token, inp.sinks, inp.window,
                             None if q_sink is None else q_sink[:, 0], attn.scale)  # [B, H, D]
    return project(ops, attn.o_proj, o.reshape(B, 1, H * D))


def decode_step(model: Any, ops: KernelOps, inp: StepInputs) -> torch.Tensor:
    """Final-norm hidden states [B, 1, C] of one new token per row; writes each row's K/V into its cache.

    `model` is a omni.model.lm.decoder.DecoderLM, typed Any because that module imports this one."""
    eps = model.cfg.rms_norm_eps
    layers = list(model.layers)
    out: torch.Tensor = inp.x
    h: torch.Tensor | None = None
    for i, layer in enumerate(layers):
        normed, h = ops.add_rms_norm(out, h, layer.input_layernorm.weight, eps)
        out = _attention(ops, layer, model, i, normed, inp)
        normed, h = ops.add_rms_norm(out, h, layer.post_attention_layernorm.weight, eps)
        mlp = layer.mlp
        if hasattr(mlp, "gate_up_proj"):
            out = project(ops, mlp.down_proj, ops.silu_gate(project(ops, mlp.gate_up_proj, normed)))
        else:  # a mixture-of-experts MLP: its grouped-matmul dispatch (omni/kernels/moe_matmul.py)
            out = mlp(normed)
    final, _ = ops.add_rms_norm(out, h, model.norm.weight, eps)
    return final


def single_session_inputs(x: torch.Tensor, positions: torch.Tensor, cache: Any, slots: torch.Tensor,
                          sink_shift: torch.Tensor | None) -> StepInputs:
    """StepInputs for a DecoderState's own cache after `cache.plan` registered the token (B rows sharing
    one slot_token [S], as `DecoderLM.init_state(batch=B)` makes them)."""
    B = x.shape[0]
    lengths = torch.full((B,), cache.length, dtype=torch.long, device=x.device)
    shift = None if sink_shift is None else sink_shift.view(1, 1).expand(B, 1)
    return StepInputs(x=x, positions=positions, k=cache.k, v=cache.v, slot_token=cache.slot_token,
                      slots=slots.expand(B), lengths=lengths, sink_shift=shift, sinks=cache.cfg.sinks,
                      window=cache.cfg.window)
