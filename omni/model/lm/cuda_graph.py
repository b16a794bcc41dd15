"""CUDA graphs of a static-buffer step function, one per batch size, captured at start-up.

A 7B decode step on the kernels is ~28 x 12 = 340 launches; at the ~4-5 us each costs from Python that is
1.5 ms of a 3.3 ms bandwidth-bound step (H200), which a graph replay removes (one launch from the host).
The step function must read its inputs from, and write its outputs to, tensors whose addresses never change
(`StepGraphs` keeps what each capture returned and hands back those same tensors on replay), and must not read
anything back to the host. Set OMNI_CUDA_GRAPHS=0 to run the same function eagerly (debugging, profiling).

On the CPU, or with graphs off, `StepGraphs` calls the function directly: the same code, minus the capture.

A module whose forward does read back to the host says so with a `graph_unsafe` attribute (the reason, e.g.
omni/model/layers/quant_linear.py's int4 experts); `host_read_reason` finds it, and the pool holding such a model runs
its step eagerly (omni/model/lm/batch.py `capture_pools`), with the reason in the start-up log. `GraphCapture` is what
start-up capture did for one pool; engines keep theirs as `graph_captures` (the server's /metrics shows them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

_WARMUP = 3  # eager runs on a side stream before capture: lazy inits, Triton compiles, cuBLAS workspaces


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs on this device: only on CUDA, and not when OMNI_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get("OMNI_CUDA_GRAPHS", "1") != "0"


def host_read_reason(model: nn.Module) -> str | None:
    """Why `model`'s step cannot be captured: the reason the first submodule with a `graph_unsafe` attribute gives
    (its forward reads a tensor back to the host), or None."""
    for name, m in model.named_modules():
        reason = getattr(m, "graph_unsafe", None)
        if reason:
            return f"{name or type(m).__name__}: {reason}"
    return None


@dataclass(frozen=True)
class GraphCapture:
    """Start-up capture of one pool's step: the batch sizes captured and the seconds it took (warm-up included),
    or (`skipped`) why that pool's step runs eagerly."""

    pool: str
    sizes: tuple[int, ...]
    seconds: float
    skipped: str | None = None

    def describe(self) -> str:
        if self.skipped is not None:
            return f"{self.pool} not captured ({self.skipped})"
        return f"{self.pool} {len(self.sizes)} sizes {self.seconds:.1f} s"


class StepGraphs:
    """`fn(batch)` -> output tensor, replayed from a graph captured per batch size in `sizes`."""

    def __init__(self, fn: Callable[[int], torch.Tensor], sizes: Sequence[int], device: torch.device) -> None:
        self.fn = fn
        self.sizes = tuple(sorted(set(sizes)))
        self.device = device
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self.capture_seconds: dict[int, float] = {}  # per batch size: warm-up + capture

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def capture(self) -> float:
        """Capture every batch size (when graphs are enabled); returns the total seconds it took."""
        if not graphs_enabled(self.device):
            return 0.0
        pool = torch.cuda.graph_pool_handle()  # one memory pool: the graphs never run concurrently
        for b in self.sizes:
            t0 = time.perf_counter()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP):
                    self.fn(b)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[b] = self.fn(b)
            torch.cuda.synchronize(self.device)
            self._graphs[b] = graph
            self.capture_seconds[b] = time.perf_counter() - t0
        return sum(self.capture_seconds.values())

    def bucket(self, n: int) -> int:
        """The smallest captured size >= n (rows past n are idle padding), or n when none is."""
        for b in self.sizes:
            if b >= n:
                return b
        return n

    def __call__(self, b: int) -> torch.Tensor:
        graph = self._graphs.get(b)
        if graph is None:
            return self.fn(b)
        graph.replay()
        return self._outputs[b]
