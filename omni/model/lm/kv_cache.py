"""A bounded, preallocated KV cache with attention sinks and a sliding window, ring-buffered.

Policy: a query at token index n attends to the first `sinks` tokens of the session and to the last
`window` tokens (n - window + 1 .. n). The first sinks + window tokens therefore see full attention;
after that the oldest non-sink tokens fall out of view and their slots are reused. Memory is fixed at
creation: [layers, B, kv_heads, sinks + window + chunk - 1, head_dim] for K and for V. The extra
`chunk - 1` slots let a prefill chunk of up to `chunk` tokens be written before attention without
overwriting anything a query of that chunk still needs, so chunked prefill equals one-shot prefill.

Positions stay inside the trained range (StreamingLLM's rule, generalised to arbitrary positions): keys
in the window are rotated by their own positions, so query-to-window distances are < window. Sink keys
are rotated by their true positions too, but a query scores them with a copy of itself rotated by
`position - shift`, where shift = max(0, pos(n - window + 1) - sinks), pos taken on the temporal axis.
For text this makes the sink distances window .. window + sinks - 1 forever, exactly as if the sinks sat
just before the window; before the cache wraps shift is 0 and attention is exact full attention.
Choose window + sinks <= max_position_embeddings to keep every distance inside the trained range.

Watching the window (`watch`): a caller that keeps what leaves the window elsewhere (the memory's L0, issue 12)
is told, before the forward that moves the window's start writes anything, that every token index below `edge`
has left it (`edge` = length - window; sink tokens never leave). Every path that adds tokens goes through
`length`: a prefill or decode step's `plan`, and the batched decode step (omni/model/lm/batch.py).

Element type: `CacheConfig.dtype`, or when None the model's choice (`DecoderLM.cache_dtype`: float16 for
the 4-bit CPU decoder, whose decode step at 2,048 tokens of context otherwise reads 94 MB of float32
cache per token, as much as its weights; the residual stream's dtype elsewhere). Keys and values are
computed in the model's dtype and rounded once when written; every path reads the stored values. The
fused C step reads float32 and float16 caches; any other dtype (bfloat16, say) runs the torch path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheConfig:
    sinks: int = 4
    window: int = 2044
    chunk: int = 256  # largest forward chunk; longer prefills are split
    dtype: torch.dtype | None = None  # K/V element type; None: the model's default (see the module docstring)

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1 or self.chunk < 1:
            raise ValueError(f"invalid cache config {self}: need sinks >= 0, window >= 1, chunk >= 1")

    @property
    def ring(self) -> int:
        return self.window + self.chunk - 1

    @property
    def capacity(self) -> int:
        return self.sinks + self.ring


@dataclass
class AttentionPlan:
    """What every layer of one forward chunk needs: where to write, what to see, how to score sinks."""

    slots: torch.Tensor  # [T] long: cache slot of each new token
    n_valid: int  # attention reads slots [0, n_valid)
    mask: torch.Tensor  # [T, n_valid] float: 0 where visible, -inf elsewhere
    sink_shift: torch.Tensor | None  # [T] long, or None when no query needs a shifted sink view


class KVCache:
    """Per-session K/V buffers (written in place by index: addresses never change)."""

    def __init__(
        self, cfg: CacheConfig, num_layers: int, batch: int, kv_heads: int, head_dim: int,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> None:
        self.cfg = cfg
        shape = (num_layers, batch, kv_heads, cfg.capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_token = torch.full((cfg.capacity,), -1, dtype=torch.long, device=device)
        self.slot_pos = torch.zeros(cfg.capacity, dtype=torch.long, device=device)
        self._init_counters()

    def _init_counters(self) -> None:
        """The host-side counters (a cache over buffers of its own or a pool's row, omni/model/lm/batch.py)."""
        self._length = 0  # tokens ever written (host counter, no device sync)
        self._watcher: Callable[[int], None] | None = None
        self._edge = 0  # the furthest edge reached (told to the watcher when there is one)

    @property
    def length(self) -> int:
        return self._length

    @length.setter
    def length(self, n: int) -> None:
        """Tokens ever written; growing it past `window` moves the window's start, which the watcher hears first."""
        edge = n - self.cfg.window
        if self._watcher is not None and edge > self._edge:
            self._watcher(edge)
        self._edge = max(self._edge, edge)
        self._length = n

    def watch(self, watcher: Callable[[int], None] | None) -> None:
        """Call `watcher(edge)` before the window's start moves to token index `edge` (module docstring); None stops.
        A cache that wrapped before the watch began tells its current edge at once."""
        self._watcher = watcher
        if watcher is not None and self._edge > 0:
            watcher(self._edge)

    def reset(self) -> None:
        """Forget every token (a watcher hears that all of them left)."""
        if self._watcher is not None and self._length > 0:
            self._watcher(self._length)
        self.slot_token.fill_(-1)
        self.slot_pos.zero_()
        self._length = 0
        self._edge = 0

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.slot_token.nbytes + self.slot_pos.nbytes

    def _slots(self, tokens: torch.Tensor) -> torch.Tensor:
        s, r = self.cfg.sinks, self.cfg.ring
        return torch.where(tokens < s, tokens, s + (tokens - s).remainder(r))

    def plan(self, temporal_positions: torch.Tensor) -> AttentionPlan:
        """Register T new tokens (their temporal-axis positions [T]) and plan their attention."""
        cfg = self.cfg
        T = temporal_positions.shape[0]
        if T > cfg.chunk:
            raise ValueError(f"chunk of {T} tokens exceeds the cache's chunk size {cfg.chunk}")
        device = self.slot_token.device
        n0 = self.length
        tokens = torch.arange(n0, n0 + T, device=device)
        slots = self._slots(tokens)
        self.slot_token[slots] = tokens
        self.slot_pos[slots] = temporal_positions.to(device)
        self.length = n0 + T
        n_valid = min(cfg.capacity, self.length)

        seen = self.slot_token[:n_valid]  # [n_valid]
        q = tokens[:, None]  # [T, 1]
        is_sink = torch.arange(n_valid, device=device)[None, :] < cfg.sinks
        visible = (seen >= 0) & (seen <= q) & (is_sink | (seen > q - cfg.window))
        mask = torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))

        sink_shift = None
        if cfg.sinks and n0 + T - cfg.window > cfg.sinks:  # some query's window starts past the sinks
            first = tokens - cfg.window + 1  # [T] oldest token in each query's window
            past = first >= cfg.sinks
            pos_first = self.slot_pos[self._slots(first.clamp(min=0))]
            sink_shift = torch.where(past, (pos_first - cfg.sinks).clamp(min=0), torch.zeros_like(first))
        return AttentionPlan(slots=slots, n_valid=n_valid, mask=mask, sink_shift=sink_shift)

    def truncate(self, length: int) -> None:
        """Forget every token from index `length` on (undo the end of a reply, e.g. after barge-in).

        Exact when at most `chunk` tokens are dropped; beyond that, the oldest window tokens that the
        dropped ones overwrote stay forgotten and the window is briefly shorter than `window`.
        """
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.slot_token.masked_fill_(self.slot_token >= length, -1)
        self._length = length  # (the window's start moves back: tokens already told gone were only written early)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, kv_heads, T, D] into the slots [T]."""
        self.k[layer].index_copy_(2, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, slots, v.to(self.v.dtype))
