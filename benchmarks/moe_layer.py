"""One mixture-of-experts MLP layer (omni/model/layers/mlp.py SparseMoE) on the CPU: router, grouped expert
matmuls (omni/kernels/moe_matmul.py, one matmul per expert that has tokens), shared expert.

    .venv/bin/python benchmarks/moe_layer.py [--shape tiny|thinker|talker|all] [--tokens 1,16,128]
                                             [--dtype float32|bfloat16] [--repeats 5] [--threads N]

Shapes: "tiny" (hidden 32, 6 experts top-3, FFN 24), "thinker" (Qwen3-Omni-30B-A3B Thinker: hidden 2048,
128 experts top-8, FFN 768), "talker" (hidden 1024, 128 experts top-6, FFN 384, shared expert 768). Random
weights; prints the median milliseconds per call for each token count, and for comparison the same layer
with a loop over all experts that masks each expert's tokens (the shape of transformers' eager path).
Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.layers.mlp import SparseMoE

SHAPES = {  # hidden, experts, top-k, expert FFN, shared expert FFN
    "tiny": (32, 6, 3, 24, 0),
    "thinker": (2048, 128, 8, 768, 0),
    "talker": (1024, 128, 6, 384, 768),
}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def loop_over_experts(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The baseline: every expert in turn, its tokens found by a mask."""
    flat = x.reshape(-1, x.shape[-1])
    top_idx, top_w = moe.route(flat)
    out = torch.zeros_like(flat)
    gate_up, down = moe.experts.gate_up_proj, moe.experts.down_proj
    I = down.shape[2]
    for e in range(gate_up.shape[0]):
        token, slot = torch.where(top_idx == e)
        if token.numel():
            h = flat[token] @ gate_up[e].T
            y = (F.silu(h[:, :I]) * h[:, I:]) @ down[e].T
            out.index_add_(0, token, y * top_w[token, slot, None])
    if moe.shared_expert is not None and moe.shared_expert_gate is not None:
        out = out + torch.sigmoid(moe.shared_expert_gate(flat)) * moe.shared_expert(flat)
    return out.view(x.shape)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    p.add_argument("--tokens", default="1,16,128", help="comma-separated token counts per call")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{'shape':8s} {'tokens':>6s} {'grouped ms':>11s} {'expert-loop ms':>15s}   ({args.dtype}, "
          f"{torch.get_num_threads()} threads)")
    for name in SHAPES if args.shape == "all" else [args.shape]:
        C, E, k, I, shared = SHAPES[name]
        torch.manual_seed(0)
        moe = SparseMoE(C, E, k, I, norm_topk_prob=True, shared_hidden=shared)
        with torch.no_grad():
            for prm in moe.parameters():
                prm.normal_(0, prm.shape[-1] ** -0.5)
        moe = moe.to(dtype).eval()
        for n in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(1, n, C).to(dtype)
            with torch.inference_mode():
                grouped = median_ms(lambda: moe(x), args.repeats)  # noqa: B023
                looped = median_ms(lambda: loop_over_experts(moe, x), args.repeats)  # noqa: B023
            print(f"{name:8s} {n:6d} {grouped:11.3f} {looped:15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
