"""Several sessions' reply steps as one device job: their decode tokens in one batched forward, prefill chunks
interleaved under a per-iteration token budget (Sarathi-Serve's chunked prefill).

A reply generator that can be batched yields `Forward(ids)` where it needs the model (feed these tokens to the
session, send back the last one's logits [1, V]) besides its events. `ModelReply` wraps it as the plain event
iterator the runtime expects: advanced alone (`next`), it answers each `Forward` with the session's own
forward, exactly as an unbatched engine would. The runtime instead hands a `ModelReply` to the device worker
with `run_batched(step_batcher, reply)`; the worker gives `StepBatcher.run_batch` the next step of every
session that is replying (omni.streaming.worker), which:

1. advances each reply to its next `Forward` (or event);
2. feeds every one-token `Forward` of sessions with a cache row in the shared pool as ONE batched decode
   step (omni/model/lm/batch.py `BatchedDecoder.decode`; each session keeps its row, positions and sampler, so
   its tokens are those it gets alone); a single one runs the session's own forward, the unbatched path
   (except where the pool replays CUDA graphs: there a lone step is its one-row graph);
3. feeds prefills, in the worker's turn order, up to the token budget left after the decode rows; a prefill
   that is not finished is `NOT_DONE`: the worker queues it again behind the other sessions' jobs, so a long
   prompt never holds the others' steps for more than one budget's worth of tokens;
4. lets each reply whose model work is done run on to its next event: that is the item's result.

A reply can also yield `PoolStep`s (omni/model/lm/batch.py): one decode step of a session that drives its own
decoding, into its row of a pool that is not necessarily `decoder` (the omni engine's Thinker and Talker pools,
omni/model/speech_session.py); step 2 then also runs every such step, those of one pool together as one batched
forward (`run_steps`), a lone one through the session's own forward (on a pool that replays CUDA graphs: its
one-row graph), and sends each reply its
(logits, hidden) back. A session's token2wav chunks come as `PoolStep`s too (pool: the engine's shared
`StreamingToken2Wav`; for Qwen3-Omni, its shared `StreamingCode2Wav`): the chunks due in one iteration decode as
one batch and each reply gets its PCM.

`log` keeps the last iterations (who decoded, who prefilled how many tokens), for tests and benchmarks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omni.model.lm.batch import BatchedDecoder, PoolStep, run_steps
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.streaming.engine import EngineEvent
from omni.streaming.worker import NOT_DONE


@dataclass
class Forward:
    """Model work a reply needs before its next event: feed `ids` (a prefill, or one decode token); the
    generator gets the last token's logits [1, V] back from its `yield`."""

    ids: list[int]
    fed: int = 0  # tokens fed so far (a prefill fed chunk by chunk)

    @property
    def left(self) -> list[int]:
        return self.ids[self.fed :]


ReplyGenerator = Generator["EngineEvent | Forward | PoolStep", Any, None]
Request = Forward | PoolStep  # model work a reply asks for


class ModelReply(Iterator[EngineEvent]):
    """An engine reply whose model calls `StepBatcher` may batch with other sessions' (see the module doc)."""

    def __init__(self, gen: ReplyGenerator, model: DecoderLM, state: DecoderState, batcher: StepBatcher,
                 sid: int | None, label: str) -> None:
        """`sid`: the session's id in `batcher.decoder`, whose pool holds its cache row (None: a cache of its
        own, never batched)."""
        self.gen, self.model, self.state, self.batcher, self.sid, self.label = gen, model, state, batcher, sid, label
        self._send: Any = None  # what the generator's pending `yield` gets back
        self._next: EngineEvent | Request | None = None  # what it yielded and nobody has taken yet
        self._finished = False

    def __next__(self) -> EngineEvent:
        while True:
            x = self._advance()
            if isinstance(x, PoolStep):
                with torch.inference_mode():
                    self.answer(x.alone())
            elif isinstance(x, Forward):
                self.feed(len(x.left))
            else:
                self._next = None
                return x

    def close(self) -> None:
        self.gen.close()
        self._finished = True

    def want(self) -> EngineEvent | Request:
        """The reply's next request or event, without consuming it (StopIteration at the reply's end)."""
        return self._advance()

    def feed(self, n: int) -> None:
        """Feed the next `n` tokens of the pending `Forward` through the session's own forward."""
        req = self._next
        assert isinstance(req, Forward)
        ids = torch.tensor([req.left[:n]], dtype=torch.long, device=self.model.device)
        logits = self.model(self.state, input_ids=ids).logits
        req.fed += n
        if not req.left:
            self.answer(logits)

    def answer(self, result: Any) -> None:
        """The pending request is done: its result (a `Forward`'s logits [1, V], a `PoolStep`'s (logits, hidden))
        goes to the generator at its next step."""
        self._next, self._send = None, result

    def _advance(self) -> EngineEvent | Request:
        if self._next is None:
            if self._finished:
                raise StopIteration
            send, self._send = self._send, None
            try:
                self._next = self.gen.send(send)
            except StopIteration:
                self._finished = True
                raise
        return self._next

    def take_event(self) -> EngineEvent | None:
        """The reply's next event once its model work is done (None: the reply ended), or NOT_DONE when it
        yields more model work first (it gets that at the next iteration)."""
        try:
            x = self._advance()
        except StopIteration:
            return None
        if isinstance(x, Forward | PoolStep):
            return NOT_DONE
        self._next = None
        return x


@dataclass
class Iteration:
    """One batched device job: the labels of the sessions decoded together, and (label, tokens) of each
    prefill chunk fed."""

    decoded: list[str] = field(default_factory=list)
    prefilled: list[tuple[str, int]] = field(default_factory=list)
    pool_steps: list[list[str]] = field(default_factory=list)  # labels of the `PoolStep`s run as one forward


class StepBatcher:
    """The engine's `omni.streaming.worker.Batcher` for reply steps (see the module docstring)."""

    def __init__(self, decoder: BatchedDecoder, max_batch: int | None = None, log_size: int = 256) -> None:
        self.decoder = decoder
        self.max_batch = max_batch or decoder.max_sessions
        self.token_budget = decoder.token_budget
        self.log: deque[Iteration] = deque(maxlen=log_size)

    def run_batch(self, items: list[Any]) -> list[Any]:
        """One iteration for these replies (`ModelReply`); each result is (event or None, seconds),
        NOT_DONE, or the exception that reply raised."""
        t0 = time.perf_counter()
        replies: list[ModelReply] = items
        results: list[Any] = [None] * len(replies)
        wants: dict[int, Forward] = {}
        steps: dict[int, PoolStep] = {}
        for i, r in enumerate(replies):
            try:
                w = r.want()
            except StopIteration:
                results[i] = (None, 0.0)
                continue
            except Exception as e:  # this reply failed; the others go on
                results[i] = e
                continue
            if isinstance(w, Forward):
                wants[i] = w
            elif isinstance(w, PoolStep):
                steps[i] = w
        it = Iteration()
        self._pool_steps(replies, steps, results, it)
        decode = [i for i, w in wants.items() if len(w.left) == 1 and replies[i].sid is not None]
        self._decode([replies[i] for i in decode], it)
        left = max(self.token_budget - len(decode), 1)  # a prefill moves on at every iteration
        for i, w in wants.items():
            if i in decode:
                continue
            n = min(len(w.left), left, self.decoder.cache_cfg.chunk)
            if n <= 0:
                results[i] = NOT_DONE
                continue
            left -= n
            it.prefilled.append((replies[i].label, n))
            try:
                replies[i].feed(n)
            except Exception as e:
                results[i] = e
                continue
            if w.left:
                results[i] = NOT_DONE
        self.log.append(it)
        for i, r in enumerate(replies):
            if results[i] is None:
                try:
                    ev = r.take_event()
                except Exception as e:
                    results[i] = e
                    continue
                results[i] = ev if ev is NOT_DONE else (ev, time.perf_counter() - t0)
        return results

    @staticmethod
    def _pool_steps(replies: list[ModelReply], steps: dict[int, PoolStep], results: list[Any], it: Iteration) -> None:
        """Every `PoolStep` asked for, those of one pool as one batched forward (omni/model/lm/batch.py run_steps)."""
        if not steps:
            return
        order = list(steps)
        groups: dict[int, list[str]] = {}
        for i in order:
            st = steps[i]
            key = id(st.pool) if st.pool is not None and st.sid is not None else -1 - i  # unpooled: alone
            groups.setdefault(key, []).append(replies[i].label)
        it.pool_steps = list(groups.values())
        for i, res in zip(order, run_steps([steps[i] for i in order]), strict=True):
            if isinstance(res, BaseException):
                results[i] = res
            else:
                replies[i].answer(res)

    def _decode(self, replies: list[ModelReply], it: Iteration) -> None:
        """One token of each reply: one batched forward of their pool rows (the session's own forward when
        there is just one, so a lone session runs exactly the unbatched path, unless the pool replays CUDA graphs:
        then its one-row graph)."""
        if len(replies) == 1 and not self.decoder.graphed:
            replies[0].feed(1)
        elif replies:
            tokens: dict[int, int | torch.Tensor] = {}
            for r in replies:
                w = r.want()
                assert r.sid is not None and isinstance(w, Forward)
                tokens[r.sid] = w.left[0]
            logits = self.decoder.decode(tokens)  # [b, V], session sid in row sessions[sid].row
            for r in replies:
                assert r.sid is not None
                row = self.decoder.sessions[r.sid].row
                r.answer(logits[row : row + 1])
        it.decoded = [r.label for r in replies]


class SessionPools:
    """Pools whose rows a session takes together (the omni engine's Thinker and Talker pools): a row in each, or
    none (the pools are full: the session then has caches of its own and runs unbatched). Thread-safe."""

    def __init__(self, pools: Sequence[BatchedDecoder]) -> None:
        if not pools:
            raise ValueError("SessionPools needs at least one pool")
        self.pools = list(pools)
        self._lock = threading.Lock()

    def open(self) -> list[int] | None:
        """A row in every pool (their session ids, in the pools' order), or None when one is full."""
        with self._lock:
            if any(len(p.sessions) >= p.max_sessions for p in self.pools):
                return None
            return [p.open() for p in self.pools]

    def leave(self, sids: Sequence[int | None]) -> None:
        """Free the rows `open` gave (None entries: nothing to free)."""
        with self._lock:
            for p, sid in zip(self.pools, sids, strict=True):
                if sid is not None and sid in p.sessions:
                    p.leave(sid)
