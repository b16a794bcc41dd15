"""The decoder MLPs: dense SwiGLU, and the sparse mixture of SwiGLU experts of the Qwen3-MoE family.

Router (Qwen3-MoE, as transformers' Qwen3-Omni): logits = gate(x) [E]; probabilities = softmax in float32;
the top-k experts by probability, optionally renormalised to sum to 1 (`norm_topk_prob`), weights cast back
to x's dtype; output = sum of the chosen experts' SwiGLU FFNs weighted by them, plus (the Talker) a shared
expert scaled by sigmoid(shared_expert_gate(x)). The expert FFNs run as grouped matmuls
(omni/kernels/moe_matmul.py): one matmul per expert over the tokens routed to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.kernels.moe_matmul import moe_experts


class GatedMLP(nn.Module):
    """SwiGLU with gate and up projections fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.hidden, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Experts(nn.Module):
    """E SwiGLU FFNs stacked: gate_up_proj [E, 2I, C] (gate rows, then up), down_proj [E, C, I]."""

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def forward(self, x: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        return moe_experts(x, self.gate_up_proj, self.down_proj, top_idx, top_w)


class SparseMoE(nn.Module):
    """Top-k routed experts (+ an optional gated shared expert), on [..., C] inputs."""

    def __init__(self, dim: int, num_experts: int, top_k: int, hidden: int, norm_topk_prob: bool,
                 shared_hidden: int = 0) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts: nn.Module = Experts(num_experts, dim, hidden)  # or quant_linear.QuantExperts
        self.shared_expert = GatedMLP(dim, shared_hidden) if shared_hidden else None
        self.shared_expert_gate = nn.Linear(dim, 1, bias=False) if shared_hidden else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top_idx [N, k], top_w [N, k] in x's dtype) for x [N, C]."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        top_w, top_idx = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        return top_idx, top_w.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = self.experts(flat, *self.route(flat))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view(x.shape)
