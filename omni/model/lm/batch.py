"""Sessions batched on one device: every ready session's decode step in ONE forward, prefill chunks
interleaved under a per-iteration token budget (Sarathi-Serve's chunked prefill), so a new prompt never
stalls the others' steps by more than one budget's worth of prefill.

Memory: one KV pool [layers, max_sessions, kv_heads, S + 1, head_dim] allocated at start; a session owns one
row (its `DecoderState` holds a `KVCache` that is a view of that row, so prefill runs the ordinary
`DecoderLM.forward` and writes straight into the pool). Slot S is scratch: rows that are idle or still
prefilling ride along in the batched step as a one-token sequence in that slot, which `slot_token` hides
from every busy row (and from the row's own session views, which end at S). The batch width is the
smallest captured size above the highest busy row. A 7B decode step reads its 14 GB of weights once for all
rows, so up to ~16 rows it should cost about what one does (arithmetic intensity stays far below the GPU's
ridge point; not yet measured, see benchmarks/gpu.py).

Each session keeps its own cache row, token count, positions and sampler; a session joining, leaving or
prefilling changes nothing in another row, so its tokens are those it would get alone (the test checks it).
The device step (`_device_step`) reads only static buffers and reads nothing back, so on CUDA it is captured
per batch size (omni/model/lm/cuda_graph.py); the host side fills one small pinned buffer per iteration. It also
leaves each row's final-norm hidden state in `hidden` (the Omni Talker's input is made from the Thinker's).

Sessions that drive their own decode loop (the Omni Thinker and Talker, omni/model/speech_session.py) yield a
`PoolStep` per decode step from their reply generator instead of running it: `run_steps` runs the steps of
many sessions that share a pool as one `decode`, and a lone step (or a session without a pool row) through
the session's own forward, so a session alone runs exactly the unbatched path; except on a pool whose step
replays CUDA graphs (captured at the engine's start-up, `capture_pools`), where a lone step is that pool's
one-row step too (one graph launch instead of ~340 kernel launches from Python). `run_alone` drives such a
generator by itself (every step alone): the plain event iterator. A pool is anything with `run_pool_steps`
(`StepPool`): the sessions' streaming token2wav chunks (omni/model/token2wav/streaming.py) and Qwen3-Omni Code2Wav
chunks (omni/model/code2wav/streaming.py) batch the same way, as right-padded rows (`pad_rows`) each masked to its own
length.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import torch

from omni.model.lm.cuda_graph import GraphCapture, StepGraphs, graphs_enabled, host_read_reason
from omni.model.lm.decode_kernels import DISPATCH_OPS, KernelOps, StepInputs, decode_step
from omni.model.lm.decoder import DecoderLM, DecoderState, default_cache_config
from omni.model.lm.kv_cache import CacheConfig, KVCache
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample

T = TypeVar("T")
GRAPH_SIZES = (1, 2, 4, 8, 16, 32)
# rows of the per-step input buffer: token id, position, slot, token index, length, slot of the oldest window
# token, whether the ring has wrapped (sinks scored by the shifted query)
_ID, _POS, _SLOT, _TOK, _LEN, _FIRST, _WRAP = range(7)


class _RowCache(KVCache):
    """A KVCache whose buffers are one row of the pool (views: written in place, never reallocated)."""

    def __init__(self, pool: BatchedDecoder, row: int) -> None:  # no super().__init__: nothing to allocate
        S = pool.cache_cfg.capacity
        self.cfg = pool.cache_cfg
        self.k, self.v = pool.k[:, row : row + 1, :, :S], pool.v[:, row : row + 1, :, :S]
        self.slot_token, self.slot_pos = pool.slot_token[row, :S], pool.slot_pos[row, :S]
        self._init_counters()


@dataclass
class BatchSession:
    sid: int
    row: int
    state: DecoderState
    pending: list[int]  # prompt tokens not prefilled yet
    sampling: SamplingConfig
    sampler: SamplerState
    tokens: list[int] = field(default_factory=list)  # generated so far; the last one not yet fed
    respond: bool = True  # sample a reply once the pending tokens are prefilled
    done: bool = False

    @property
    def ready(self) -> bool:
        """Prefilled and still generating: takes part in the next batched decode step."""
        return not self.pending and bool(self.tokens) and not self.done


class BatchedDecoder:
    def __init__(self, model: DecoderLM, max_sessions: int, cache: CacheConfig | None = None,
                 token_budget: int = 256, ops: KernelOps = DISPATCH_OPS,
                 graph_sizes: Sequence[int] = GRAPH_SIZES, embeds: bool = False) -> None:
        """embeds=True: decode steps take input embeddings (`decode` with [1, 1, C] tensors, e.g. the Talker's
        codec + text slot) instead of token ids."""
        if max_sessions < 1 or token_budget < 1:
            raise ValueError(f"need max_sessions >= 1 and token_budget >= 1, got {max_sessions}, {token_budget}")
        self.model, self.ops, self.max_sessions, self.token_budget = model, ops, max_sessions, token_budget
        self.cache_cfg = cache or default_cache_config(model.cfg)
        cfg, dev = model.cfg, model.device
        S = self.cache_cfg.capacity
        shape = (cfg.num_layers, max_sessions, cfg.num_kv_heads, S + 1, cfg.head_dim)
        dtype = self.cache_cfg.dtype or model.dtype
        self.k = torch.zeros(shape, device=dev, dtype=dtype)
        self.v = torch.zeros(shape, device=dev, dtype=dtype)
        self.slot_token = torch.full((max_sessions, S + 1), -1, dtype=torch.long, device=dev)
        self.slot_pos = torch.zeros(max_sessions, S + 1, dtype=torch.long, device=dev)
        self._inputs = torch.zeros(7, max_sessions, dtype=torch.long, device=dev)
        self._x = torch.zeros(max_sessions, 1, cfg.hidden_size, dtype=model.dtype, device=dev) if embeds else None
        self.hidden = torch.zeros(max_sessions, cfg.hidden_size, dtype=model.dtype, device=dev)  # of the last step
        self._host = torch.zeros(7, max_sessions, dtype=torch.long, pin_memory=dev.type == "cuda")
        self._idle_inputs(max_sessions)
        self._inputs.copy_(self._host)
        sizes = [b for b in graph_sizes if b < max_sessions] + [max_sessions]
        self.graphs = StepGraphs(self._device_step, sizes, dev)
        self.sessions: dict[int, BatchSession] = {}
        self._rows: list[int | None] = [None] * max_sessions
        self._next_sid = 0

    def capture_graphs(self) -> float:
        """Capture the decode step per batch size (CUDA only, see cuda_graph.py); seconds taken. Call before
        any session joins: the warm-up steps run on idle rows, which write only the scratch slot. A model with a
        step that reads back to the host (`host_read_reason`) is not captured: its step runs eagerly."""
        if self.sessions:
            raise RuntimeError("capture the graphs before sessions join")
        if host_read_reason(self.model) is not None:
            return 0.0
        with torch.inference_mode():  # as the steps run (run_steps)
            return self.graphs.capture()

    @property
    def graphed(self) -> bool:
        """The step is replayed from captured graphs: a lone session's step is worth running here too
        (`run_steps`)."""
        return self.graphs.captured

    def join(self, prompt: Sequence[int], sampling: SamplingConfig | None = None, respond: bool = True) -> int:
        """A new session with this prompt (token ids); returns its id. Its prefill starts at the next step;
        with respond=False it only prefills (a user still speaking) until `feed` asks for the reply."""
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        if None not in self._rows:
            raise RuntimeError(f"all {self.max_sessions} session rows are taken")
        row = self._rows.index(None)
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        cache = _RowCache(self, row)
        cache.reset()
        cfg = sampling or SamplingConfig()
        sampler = SamplerState.create(self.model.cfg.vocab_size, seed=cfg.seed, device=self.model.device)
        self.sessions[sid] = BatchSession(sid, row, DecoderState(cache=cache), list(prompt), cfg, sampler,
                                          respond=respond)
        self._rows[row] = sid
        return sid

    def open(self, sampling: SamplingConfig | None = None) -> int:
        """A session with an empty cache row and no prompt, for a caller that prefills through
        `self.sessions[sid].state` itself and steps with `decode` (the Talker)."""
        sid = self.join([0], sampling, respond=False)
        self.sessions[sid].pending.clear()
        return sid

    def feed(self, sid: int, tokens: Sequence[int], respond: bool = True) -> None:
        """More prompt tokens for a session that has not started its reply (the next block of the user's turn)."""
        s = self.sessions[sid]
        if s.tokens:
            raise ValueError(f"session {sid} is already replying; feed prompt tokens before the reply")
        s.pending.extend(tokens)
        s.respond = respond

    def leave(self, sid: int) -> list[int]:
        """End a session (finished or not), free its row, and return its generated tokens."""
        s = self.sessions.pop(sid)
        self._rows[s.row] = None
        s.state.cache.reset()
        return s.tokens

    def step(self) -> dict[int, int]:
        """One scheduler iteration: a batched decode step of every ready session, then prefill chunks of
        waiting sessions (oldest first) up to the token budget left. Returns the new token of each session
        that got one (a prefill that completes gives its session's first token)."""
        out = self._decode()
        budget = self.token_budget - len(out)
        for s in sorted(self.sessions.values(), key=lambda s: s.sid):
            if budget <= 0:
                break
            if s.pending:
                n = min(len(s.pending), budget, self.cache_cfg.chunk)
                budget -= n
                ids = torch.tensor([s.pending[:n]], device=self.model.device)
                s.sampler.observe(ids)
                del s.pending[:n]
                logits = self.model(s.state, input_ids=ids).logits
                if not s.pending and s.respond:
                    assert logits is not None
                    out[s.sid] = self._choose(s, logits)
        return out

    def _choose(self, s: BatchSession, logits: torch.Tensor) -> int:  # logits [1, V]
        return self._take(s, int(sample(logits, s.sampling, s.sampler)[0]))

    def _take(self, s: BatchSession, tok: int) -> int:
        s.sampler.observe(torch.tensor([[tok]], device=self.model.device))
        s.tokens.append(tok)
        s.done = len(s.tokens) >= s.sampling.max_new_tokens or tok in s.sampling.stop_token_ids
        return tok

    def _slot(self, n: int) -> int:
        sinks, ring = self.cache_cfg.sinks, self.cache_cfg.ring
        return n if n < sinks else sinks + (n - sinks) % ring

    def _idle_inputs(self, b: int) -> None:
        host = self._host[:, :b]
        host.zero_()
        host[_SLOT] = self.cache_cfg.capacity  # the scratch slot, as the row's only token: an idle row attends
        host[_LEN] = 1  # to itself, so its K/V stay finite (0 x NaN in another step's V sum would be NaN)

    def decode(self, inputs: dict[int, int | torch.Tensor]) -> torch.Tensor:
        """One batched decode step of the given sessions: sid -> token id, or input embedding [1, 1, C] with
        embeds=True, at position `state.next_position`. Returns logits [b, V], session `sid` in row
        `self.sessions[sid].row` (its final-norm hidden state in `self.hidden[row]`); sampling is the caller's."""
        ready = [self.sessions[sid] for sid in inputs]
        b = self.graphs.bucket(max(s.row for s in ready) + 1)
        self._idle_inputs(b)
        window, sinks = self.cache_cfg.window, self.cache_cfg.sinks
        for s in ready:
            cache, n = s.state.cache, s.state.cache.length
            first = n - window + 1  # oldest token in this query's window
            wrapped = sinks > 0 and first > sinks  # as KVCache.plan decides for one token
            item = inputs[s.sid]
            if isinstance(item, torch.Tensor):
                if self._x is None:
                    raise ValueError("embedding inputs need BatchedDecoder(embeds=True)")
                self._x[s.row].copy_(item.reshape(1, -1))
                item = 0
            self._host[:, s.row] = torch.tensor([item, s.state.next_position, self._slot(n), n, n + 1,
                                                 self._slot(first) if wrapped else 0, int(wrapped)])
            cache.length = n + 1
            s.state.next_position += 1
        self._inputs[:, :b].copy_(self._host[:, :b], non_blocking=True)
        return self.graphs(b)

    def run_pool_steps(self, steps: Sequence[PoolStep]) -> list[Any]:
        """The decode steps of several sessions (`PoolStep`s into this pool) as one `decode`: (logits [1, V],
        final-norm hidden [1, C]) per step, in the steps' order."""
        logits = self.decode({cast(int, st.sid): st.item for st in steps})
        rows = [self.sessions[cast(int, st.sid)].row for st in steps]
        return [(logits[r : r + 1], self.hidden[r : r + 1].clone()) for r in rows]

    def _decode(self) -> dict[int, int]:
        ready = [s for s in self.sessions.values() if s.ready]
        if not ready:
            return {}
        logits = self.decode({s.sid: s.tokens[-1] for s in ready})  # [b, V]
        greedy = logits.argmax(-1).tolist()  # one read-back for every plain greedy session
        out = {}
        for s in ready:
            if s.sampling.temperature == 0.0 and s.sampling.repetition_penalty == 1.0:
                out[s.sid] = self._take(s, greedy[s.row])
            else:
                out[s.sid] = self._choose(s, logits[s.row : s.row + 1])
        return out

    def _device_step(self, b: int) -> torch.Tensor:
        """Logits [b, V] of rows 0..b-1 from the static input buffer; graph-capturable (no host reads)."""
        model, sinks = self.model, self.cache_cfg.sinks
        ids, pos, slot, tok, length, first, wrap = self._inputs[:, :b]
        rows = torch.arange(b, device=ids.device)
        self.slot_token[:b, -1] = -1  # scratch: invisible to busy rows, then visible to idle ones (token 0)
        self.slot_token[rows, slot] = tok
        self.slot_pos[rows, slot] = pos
        shift = torch.where(wrap.bool(), (self.slot_pos[rows, first] - sinks).clamp(min=0), torch.zeros_like(pos))
        x = model.embed_tokens(ids[:, None]).to(model.dtype) if self._x is None else self._x[:b]
        inp = StepInputs(x=x, positions=pos[:, None], k=self.k[:, :b], v=self.v[:, :b],
                         slot_token=self.slot_token[:b], slots=slot, lengths=length, sink_shift=shift[:, None],
                         sinks=sinks, window=self.cache_cfg.window)
        final = decode_step(model, self.ops, inp)[:, 0]
        self.hidden[:b].copy_(final)
        return model.head(final)


StepResult = tuple[torch.Tensor, torch.Tensor | None]  # logits [1, V], final-norm hidden [1, C] (when kept)


class StepPool(Protocol):
    """What batches the `PoolStep`s of several sessions: a `BatchedDecoder` (decode steps into its cache rows),
    or a `StreamingToken2Wav` / `StreamingCode2Wav` (speech chunks, omni/model/{token2wav,code2wav}/streaming.py)."""

    def run_pool_steps(self, steps: Sequence[PoolStep]) -> list[Any]: ...


@dataclass
class PoolStep:
    """One step a session's generator asks for, run by its driver alone or batched with other sessions' steps
    of the same `pool`. For a `BatchedDecoder`: feed `item` (a token id, or an input embedding [1, 1, C] for an
    `embeds=True` pool) at the session's next position (`state.next_position`) into its row `sid`, and the
    generator gets a `StepResult` back. For a `StreamingToken2Wav`: decode the speech chunk `item` (a
    `ChunkJob`; sid 0, token2wav keeps no rows), and the generator gets its `PCMChunk`. For a `StreamingCode2Wav`:
    decode the buffered frames of the stream `item` (a `Code2WavStreamState`; sid 0), and the generator gets its
    list of `PCMChunk`s. `alone()` runs the same step through the session's own path (pool None or sid None: never
    batched)."""

    pool: StepPool | None
    sid: int | None
    item: Any
    alone: Callable[[], Any]


def run_steps(steps: Sequence[PoolStep]) -> list[Any]:
    """Run the steps, those of two or more sessions of one pool (or one, on a pool that replays CUDA graphs) as
    one batched `run_pool_steps`, the others alone; results in the steps' order (an exception: that step failed;
    the others are unaffected)."""
    out: list[Any] = [None] * len(steps)
    groups: dict[int, list[int]] = {}
    for i, st in enumerate(steps):
        if st.pool is not None and st.sid is not None:
            groups.setdefault(id(st.pool), []).append(i)
    batched = {i for ix in groups.values() if len(ix) > 1 or _graphed(steps[ix[0]].pool) for i in ix}
    with torch.inference_mode():
        for ix in groups.values():
            if ix[0] not in batched:
                continue
            pool = steps[ix[0]].pool
            assert pool is not None
            try:
                results = pool.run_pool_steps([steps[i] for i in ix])
            except Exception as e:  # the batched step failed: every session in it
                results = [e] * len(ix)
            for i, res in zip(ix, results, strict=True):
                out[i] = res
        for i, st in enumerate(steps):
            if i not in batched:
                try:
                    out[i] = st.alone()
                except Exception as e:  # this session's step failed alone
                    out[i] = e
    return out


def _graphed(pool: StepPool | None) -> bool:
    """A pool whose step replays CUDA graphs (`BatchedDecoder.graphed`): a lone step runs there too, one graph
    launch instead of the session's own eager forward."""
    return bool(getattr(pool, "graphed", False))


def capture_pools(pools: Mapping[str, BatchedDecoder]) -> list[GraphCapture]:
    """Capture every pool's decode step (named for the log) at start-up, before any session joins: what each got.
    Pools where graphs are off (the CPU, OMNI_CUDA_GRAPHS=0) are left out: nothing was captured or tried."""
    out = []
    for name, pool in pools.items():
        if not graphs_enabled(pool.model.device):
            continue
        reason = host_read_reason(pool.model)
        if reason is not None:
            out.append(GraphCapture(name, (), 0.0, reason))
            continue
        seconds = pool.capture_graphs()
        out.append(GraphCapture(name, pool.graphs.sizes, seconds))
    return out


def capture_report(pools: Mapping[str, BatchedDecoder], captures: Sequence[GraphCapture]) -> str | None:
    """The start-up log line for `capture_pools`' result: what was captured (and what was not, and why), that graphs
    are off on a CUDA device, or None when no pool is on CUDA (nothing to say)."""
    if captures:
        return "captured CUDA graphs: " + ", ".join(c.describe() for c in captures)
    if any(pool.model.device.type == "cuda" for pool in pools.values()):
        return "CUDA graphs off (OMNI_CUDA_GRAPHS=0): batched decode steps run eagerly"
    return None


def run_alone(gen: Generator[T | PoolStep, Any, None]) -> Generator[T, None, None]:
    """The events of a generator that yields `PoolStep`s, every step run alone (the unbatched path).
    Closing the iterator closes the generator."""
    send: Any = None
    try:
        while True:
            try:
                x = gen.send(send)
            except StopIteration:
                return
            if isinstance(x, PoolStep):
                send = x.alone()
            else:
                send = None
                yield x
    finally:
        gen.close()


def pad_rows(xs: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, list[int]]:
    """Several sessions' inputs as one right-padded batch: each x [k, ...] zero-padded along `dim` to the longest,
    then concatenated along dim 0; and each x's length along `dim`. A pool that batches ragged steps (token2wav's
    DiT windows, Code2Wav's chunks) masks each row to its own length."""
    lengths = [x.shape[dim] for x in xs]
    T = max(lengths)
    out = []
    for x in xs:
        shape = list(x.shape)
        shape[dim] = T - x.shape[dim]
        out.append(torch.cat([x, x.new_zeros(shape)], dim=dim) if shape[dim] else x)
    return torch.cat(out), lengths


def pool_row(pool: BatchedDecoder | None) -> int | None:
    """A free row of `pool` for a new session (its id), or None when there is no pool or it is full."""
    if pool is None or len(pool.sessions) >= pool.max_sessions:
        return None
    return pool.open()
