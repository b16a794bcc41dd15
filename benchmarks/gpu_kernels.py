"""Triton kernels against their eager references, at Qwen2.5-Omni-7B Thinker decode shapes (hidden 3584,
MLP 18944, 28 query / 4 KV heads of 128, M-RoPE sections (16, 24, 24), a 4 + 4096-token sink + window cache),
plus Qwen3-Omni-30B-A3B Thinker rows: interleaved M-RoPE (24, 20, 20) and the grouped expert matmuls of one
MoE layer (hidden 2048, 128 experts top-8, expert FFN 768; `batch` tokens routed at random).

    .venv/bin/python benchmarks/gpu_kernels.py [--repeats 50] [--batch 1]

On CUDA: per op, the median time of the Triton kernel and of the eager reference (CUDA events, after a
warm-up that includes Triton's compile), the kernel's effective bandwidth (bytes it must read and write /
time) next to the device's measured copy bandwidth, and the largest difference between the two outputs.
The matmuls also get dense bf16 F.linear as the baseline they are meant to beat. Without a GPU it says so
and times the references only, at small sizes (a smoke test that keeps this script working in CI); with
TRITON_INTERPRET=1 in the environment it also runs the kernels in Triton's CPU interpreter, which checks
the script's kernel calls and their outputs (the times are the interpreter's, meaningless for speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.kernels._triton import TRITON_AVAILABLE, interpreting
from omni.kernels.decode_attention import decode_attention_reference, decode_attention_triton
from omni.kernels.int4_matmul import int4_matmul_reference, int4_matmul_triton, quantize_int4
from omni.kernels.int8_matmul import int8_matmul_reference, int8_matmul_triton, quantize_int8
from omni.kernels.moe_matmul import grouped_matmul_reference, grouped_matmul_triton, moe_route
from omni.kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton
from omni.kernels.rope import rope_qk_reference_, rope_qk_triton_
from omni.kernels.silu_gate import silu_gate_reference, silu_gate_triton

Op = tuple[str, Callable[[], object], Callable[[], object] | None, int]  # name, reference, kernel, bytes


def median_ms(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    for _ in range(3):  # warm-up: Triton compiles on the first call
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device) -> float:
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 20, device.type == "cuda")
    return 2 * src.numel() / ms / 1e6


def build_ops(device: torch.device, batch: int, small: bool) -> list[Op]:
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    C, I, H, HKV, D, WINDOW = (256, 512, 8, 2, 32, 256) if small else (3584, 18944, 28, 4, 128, 4096)
    SINKS, CHUNK = 4, 256
    section = (D // 8, 3 * D // 16, 3 * D // 16)  # (16, 24, 24) at D = 128
    S = SINKS + WINDOW + CHUNK - 1
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dt)

    x, res, w = rand(batch, C), rand(batch, C), rand(C)
    gate_up = rand(batch, 2 * I)
    qkv = rand(batch, 1, (H + 2 * HKV) * D)
    qk = qkv[..., : (H + HKV) * D].view(batch, 1, H + HKV, D)
    q_view, k_view = qk[:, :, :H], qk[:, :, H:]
    pos = torch.full((3, batch, 1), 1_000_000, device=device)
    inv = (1.0 / 1e6 ** (torch.arange(0, D, 2, device=device).double() / D))
    q, q_sink, kc, vc = rand(batch, H, D), rand(batch, H, D), rand(batch, HKV, S, D), rand(batch, HKV, S, D)
    length = 3 * S  # wrapped: the sinks plus the last `ring` tokens fill every slot (KVCache's slot rule)
    tokens = torch.cat([torch.arange(SINKS), torch.arange(length - (S - SINKS), length)]).to(device)
    slots = torch.where(tokens < SINKS, tokens, SINKS + (tokens - SINKS) % (S - SINKS))
    slot_token = torch.full((S,), -1, device=device, dtype=torch.long).index_put_((slots,), tokens)
    lengths = torch.full((batch,), length, device=device)
    b = 2 if cuda else 4
    ops: list[Op] = [
        ("add_rms_norm", lambda: add_rms_norm_reference(x, res, w, 1e-6),
         lambda: add_rms_norm_triton(x, res, w, 1e-6), 4 * batch * C * b),
        ("silu_gate (fused gate_up)", lambda: silu_gate_reference(gate_up), lambda: silu_gate_triton(gate_up),
         3 * batch * I * b),
        ("rope_qk_ (M-RoPE)", lambda: rope_qk_reference_(q_view, k_view, pos, inv, section),
         lambda: rope_qk_triton_(q_view, k_view, pos, inv, section), 2 * batch * (H + HKV) * D * b),
        ("decode_attention (wrapped)",
         lambda: decode_attention_reference(q, kc, vc, lengths, slot_token, SINKS, WINDOW, q_sink),
         lambda: decode_attention_triton(q, kc, vc, lengths, slot_token, SINKS, WINDOW, q_sink),
         2 * batch * HKV * S * D * b),
    ]
    for name, N, K in (("gate_up", 2 * I, C), ("down", C, I)):
        wd = rand(N, K)
        q8, s8 = quantize_int8(wd)
        p4, s4, m4 = quantize_int4(wd, 128 if K % 128 == 0 else 32)
        group = 128 if K % 128 == 0 else 32
        xm = rand(batch, K)
        ops += [
            (f"dense F.linear {name} {N}x{K}", partial(F.linear, xm, wd), None, N * K * b),
            (f"int8_matmul {name}", partial(int8_matmul_reference, xm, q8, s8), partial(int8_matmul_triton, xm, q8, s8),
             N * K + 4 * N),
            (f"int4_matmul {name} g{group}", partial(int4_matmul_reference, xm, p4, s4, m4, group),
             partial(int4_matmul_triton, xm, p4, s4, m4, group), N * K // 2 + 4 * N * K // group),
        ]
    ops += moe_ops(device, dtype, batch, small, rand)
    return ops


def moe_ops(device: torch.device, dtype: torch.dtype, batch: int, small: bool,
            rand: Callable[..., torch.Tensor]) -> list[Op]:
    """Qwen3-Omni Thinker MoE rows: interleaved M-RoPE and the two grouped expert matmuls of one layer."""
    b = 2 if device.type == "cuda" else 4
    C, I, E, K, H, HKV, D = (256, 96, 16, 4, 8, 2, 32) if small else (2048, 768, 128, 8, 32, 4, 128)
    qk = rand(batch, 1, H + HKV, D)
    q_view, k_view = qk[:, :, :H], qk[:, :, H:]
    pos = torch.full((3, batch, 1), 1_000_000, device=device)
    inv = (1.0 / 1e6 ** (torch.arange(0, D, 2, device=device).double() / D))
    section = (3 * D // 16, 5 * D // 32, 5 * D // 32)  # (24, 20, 20) at D = 128
    top = torch.rand(batch, E, device=device).topk(K, dim=-1).indices
    _, offsets = moe_route(top, E)
    active = int((offsets[1:] > offsets[:-1]).sum())
    ops: list[Op] = [("rope_qk_ (interleaved M-RoPE)",
                      lambda: rope_qk_reference_(q_view, k_view, pos, inv, section, interleaved=True),
                      lambda: rope_qk_triton_(q_view, k_view, pos, inv, section, interleaved=True),
                      2 * batch * (H + HKV) * D * b)]
    for name, N, Kd in (("gate_up", 2 * I, C), ("down", C, I)):
        w, x = rand(E, N, Kd), rand(batch * K, Kd)
        ops.append((f"moe grouped_matmul {name} ({active} experts)", partial(grouped_matmul_reference, x, w, offsets),
                    partial(grouped_matmul_triton, x, w, offsets), active * N * Kd * b))
    return ops


def max_diff(a: object, b: object) -> float:
    ta = a[0] if isinstance(a, tuple) else a
    tb = b[0] if isinstance(b, tuple) else b
    if not isinstance(ta, torch.Tensor) or not isinstance(tb, torch.Tensor):
        return float("nan")  # in-place ops return None
    return float((ta.float() - tb.float()).abs().max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--batch", type=int, default=1, help="decode rows (sessions) per step")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and TRITON_AVAILABLE
    device = torch.device("cuda" if cuda else "cpu")
    interpreted = not cuda and TRITON_AVAILABLE and interpreting()
    if not cuda:
        torch.set_num_threads(1)  # tiny references: more threads only add contention on a shared machine
        print("The Triton kernels need a CUDA GPU (and triton); timing the eager references at small sizes"
              + (", and the kernels in the interpreter (not a speed figure)." if interpreted else " only."))
    else:
        print(f"{torch.cuda.get_device_name()}: measured copy bandwidth {copy_bandwidth_gbs(device):.0f} GB/s")
    print(f"{'op':40s} {'reference ms':>13s} {'kernel ms':>10s} {'speed-up':>9s} {'kernel GB/s':>12s} {'max diff':>9s}")
    for name, ref, kernel, nbytes in build_ops(device, args.batch, small=not cuda):
        ref_ms = median_ms(ref, args.repeats if cuda else 3, cuda)
        if kernel is None or not (cuda or interpreted):
            print(f"{name:40s} {ref_ms:13.4f} {'-':>10s} {'-':>9s} {'-':>12s} {'-':>9s}")
            continue
        k_ms = median_ms(kernel, args.repeats if cuda else 1, cuda)
        diff = max_diff(ref(), kernel()) if "rope" not in name else float("nan")
        print(f"{name:40s} {ref_ms:13.4f} {k_ms:10.4f} {ref_ms / k_ms:8.2f}x {nbytes / k_ms / 1e6:12.0f} {diff:9.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
