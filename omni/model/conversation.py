"""What both Thinker families' conversations share, prefilled piece by piece while the user is still talking.

`ConversationSession` owns the per-session state (bounded KV cache, TMRoPE cursor) and feeds each completed
piece into the cache at once; each family's session (omni/model/thinker_session.py for Qwen2.5-Omni,
omni/model/qwen3/session.py for Qwen3-Omni) adds its media. Because every piece's positions depend only on what
came before, the cache then holds exactly what the Thinker computes for the whole prompt. Also here: the events a
reply yields (`TokenText`, `ReplyRecord`), the undo mark (`ThinkerMark`), the encoder outputs kept for memory
(`EncodedPiece`) and the recalled-memory slot's pieces (`RecalledFeatures`, `SlotPiece`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import torch

from omni.model.lm.batch import BatchedDecoder, PoolStep, run_alone
from omni.model.lm.decoder import DecoderLM, DecoderState, LayerAdds
from omni.model.lm.detokenizer import IncrementalDetokenizer
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import PromptBuilder
from omni.model.tmrope import MultimodalTokenIds, PositionCursor, TMRoPEConfig

T = TypeVar("T")


@dataclass
class TokenText:
    """The text one reply token completed (the engine's `TextDelta` is made from it)."""

    text: str
    token_id: int
    t: float  # time.monotonic() when it was produced


@dataclass
class ReplyRecord:
    """A reply that ran to its end: what the Thinker said and, when spoken, what the Talker and token2wav
    made of it."""

    text: str
    token_ids: list[int]
    codes: list[int]  # codec codes sent to token2wav (stop code excluded); empty when not spoken
    samples: int  # audio samples emitted (at token2wav.SAMPLE_RATE)
    t: float


@dataclass(frozen=True)
class ThinkerMark:
    """Where the Thinker's cache and the position cursor stood at `ThinkerSession.mark()`."""

    thinker_tokens: int  # Thinker cache length
    thinker_position: int  # the Thinker decoder's next text position
    next_id: int  # the TMRoPE cursor's next id
    prefilled_tokens: int
    logits: torch.Tensor | None


@dataclass(frozen=True)
class EncodedPiece:
    """Encoder output fed into the cache: one audio block (or its tail) or one video patch, kept for memory.

    `offset_s`: seconds from the start of its segment (its first temporal id above the segment's, at 25 ids/s).
    `cache_at`: the cache length where it was fed (pieces a rollback drops are forgotten with it)."""

    kind: Literal["audio", "video"]
    tokens: torch.Tensor  # [n, C] in the LM's input space (the encoders project into it)
    offset_s: float
    cache_at: int
    grid_hw: tuple[int, int] = (0, 0)  # video: merged rows and columns of the patch's tokens


class PromptPart(NamedTuple):
    """A piece of a prompt fed with others in one forward (`_feed_parts`): embeddings [T, C] at positions [3, T];
    `ids` for text (token embeddings), None for encoder features of `kind` ("audio" or "image")."""

    x: torch.Tensor
    positions: torch.Tensor
    ids: list[int] | None
    kind: str = "text"


@dataclass(frozen=True)
class RecalledFeatures:
    """Features to re-enter in a recalled-memory slot: an audio stretch, or one video frame as an image."""

    kind: Literal["audio", "image"]
    tokens: torch.Tensor  # [n, C]
    grid: tuple[int, int, int] = (1, 1, 1)  # image: (1, h, w) in 14-px patches, h * w / merge^2 == n


SlotPiece = str | RecalledFeatures


@dataclass
class _Encoded:
    """Encoder outputs of the open segment(s) since the caller last took them (`ThinkerSession.take_encoded`)."""

    pieces: list[EncodedPiece] = field(default_factory=list)
    segment_start: int = 0  # the temporal id where the open segment's media starts


class _TokenIds(Protocol):
    @property
    def tokens(self) -> MultimodalTokenIds: ...


class _ThinkerWeights(Protocol):
    """What a session needs of either family's Thinker (omni.model.thinker.Thinker,
    omni.model.qwen3.thinker.Qwen3Thinker)."""

    lm: DecoderLM

    @property
    def cfg(self) -> _TokenIds: ...

    @property
    def device(self) -> torch.device: ...


class ConversationSession:
    """What both Thinker families' sessions share: the bounded KV cache, the TMRoPE cursor, the prefill
    primitives, turns (with the recalled-memory slot), decoding, mark/rollback and the encoder outputs kept for
    memory (`take_encoded`). A family's session adds its media: `add_audio_tokens` and `add_image_tokens` (which
    the slot uses) and its live audio/video segments (`_segment_open` says whether one is open)."""

    thinker: _ThinkerWeights

    def __init__(
        self,
        thinker: _ThinkerWeights,
        prompt: PromptBuilder,
        rope: TMRoPEConfig,
        cache: CacheConfig | None = None,
        tokenizer: TextTokenizer | None = None,
        tap_layer: int | None = None,
        pool: BatchedDecoder | None = None,
        sid: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        """`system_prompt`: fed as the conversation's system turn, last (a family's session sets up what its
        `_feed` needs before calling this). `tap_layer` k: every fed piece's input embeddings and the hidden states
        entering layer k are kept for `take_taps` (a Talker that reads them). `pool`, `sid`: the session's cache is
        row `sid` of this pool of the Thinker's decoder (its `cache` config), so the decode steps of
        `respond_steps` can run batched with other sessions' (omni/model/lm/batch.py); None: a cache of its own."""
        self.thinker = thinker
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.tap_layer = tap_layer
        self._taps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pool: BatchedDecoder | None = pool if sid is not None else None
        self.sid: int | None = sid
        if pool is not None and sid is not None:
            if cache is not None and cache != pool.cache_cfg:
                raise ValueError("the session's cache config differs from its pool's")
            self.state: DecoderState = pool.sessions[sid].state
        else:
            self.state = thinker.lm.init_state(cache)
        self.cursor = PositionCursor(rope)
        self.logits: torch.Tensor | None = None  # [V] after the last prefilled token
        self.prefilled_tokens = 0
        self._encoded = _Encoded()
        if system_prompt is not None:
            self.feed_ids(prompt.system_turn(system_prompt))

    # ---- prefill primitives ------------------------------------------------------------------------------

    def feed_ids(self, ids: Sequence[int]) -> None:
        """Text or special tokens at the next text positions."""
        if ids:
            x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
            self._feed(x, self.cursor.text(len(ids)))

    @torch.inference_mode()
    def _feed(self, x: torch.Tensor, positions: torch.Tensor, adds: LayerAdds | None = None) -> None:
        """x [T, C] at positions [3, T]; `adds`: DeepStack residuals of its visual tokens (Qwen3-Omni)."""
        if x.shape[0] == 0:
            return
        x = x.to(self.thinker.lm.dtype)
        out = self.thinker.lm(self.state, inputs_embeds=x[None], positions=positions[:, None].to(x.device),
                              layer_adds=adds, hidden_layer=self.tap_layer)
        assert out.logits is not None
        self.logits = out.logits[0]
        self.prefilled_tokens += x.shape[0]
        if out.layer_hidden is not None:
            self._taps.append((x, out.layer_hidden[0]))

    def take_taps(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input embeddings [n, C], hidden states entering `tap_layer` [n, C]) of each piece fed since the last
        call, in order (a rolled-back piece included: the caller drops what `rollback` drops)."""
        taps, self._taps = self._taps, []
        return taps

    def _text_part(self, ids: Sequence[int]) -> PromptPart:
        """`ids` embedded at the next text positions, to feed later with `_feed_parts`."""
        x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
        return PromptPart(x, self.cursor.text(len(ids)), list(ids))

    def _feed_parts(self, parts: Sequence[PromptPart]) -> None:
        """Consecutive prompt parts, their positions already taken from the cursor in order, prefilled in one
        forward."""
        self._feed(torch.cat([p.x for p in parts]), torch.cat([p.positions for p in parts], dim=1))

    def _feed_encoded(
        self, kind: Literal["audio", "video"], x: torch.Tensor, positions: torch.Tensor,
        grid_hw: tuple[int, int] = (0, 0), adds: LayerAdds | None = None,
    ) -> None:
        """`_feed` for encoder output, which is also kept (see `take_encoded`). Audio is kept in pieces cut at
        every `ids_per_chunk` temporal ids (2 s) of its segment, whatever stretch is fed at once."""
        if x.shape[0] == 0:
            return
        per_s = self.cursor.cfg.position_id_per_seconds
        start, at = self._encoded.segment_start, self.state.cache.length
        if kind == "video":
            offset = (int(positions[0].min()) - start) / per_s
            self._encoded.pieces.append(EncodedPiece(kind, x, offset, at, grid_hw))
        else:
            ids, per = positions[0].tolist(), self.cursor.cfg.ids_per_chunk
            cuts = [0] + [i for i in range(1, len(ids)) if (ids[i] - start) % per == 0] + [len(ids)]
            for a, b in zip(cuts, cuts[1:], strict=False):
                self._encoded.pieces.append(EncodedPiece(kind, x[a:b], (ids[a] - start) / per_s, at + a))
        self._feed(x, positions, adds)

    def take_encoded(self) -> list[EncodedPiece]:
        """The audio blocks and video patches fed since the last call that the open segment can no longer feed
        again (a louder part re-floors earlier audio: `_settled_length`), in the order fed; forgotten here."""
        limit = self._settled_length()
        taken = [p for p in self._encoded.pieces if p.cache_at < limit]
        self._encoded.pieces = [p for p in self._encoded.pieces if p.cache_at >= limit]
        return self._join_audio(taken)

    def _join_audio(self, pieces: list[EncodedPiece]) -> list[EncodedPiece]:
        """Audio fed in stretches between video patches (Qwen3's merged order) back as whole 2-s pieces: a piece
        that continues the last audio piece inside one `ids_per_chunk` is joined to it."""
        per_s, per = self.cursor.cfg.position_id_per_seconds, self.cursor.cfg.ids_per_chunk
        out: list[EncodedPiece] = []
        last: int | None = None  # index in `out` of the last audio piece
        for p in pieces:
            if p.kind == "audio":
                begin = round(p.offset_s * per_s)
                if last is not None and begin % per:
                    q = out[last]
                    if round(q.offset_s * per_s) + q.tokens.shape[0] == begin:
                        out[last] = replace(q, tokens=torch.cat([q.tokens, p.tokens]))
                        continue
                last = len(out)
            out.append(p)
        return out

    def _settled_length(self) -> int:
        """The cache length below which the open segment can no longer roll back (no segment: all of it)."""
        return self.state.cache.length

    def _forget_encoded(self, cache_length: int) -> None:
        self._encoded.pieces = [p for p in self._encoded.pieces if p.cache_at < cache_length]

    # ---- turns -----------------------------------------------------------------------------------------------

    def start_user_turn(self) -> None:
        self.feed_ids(self.prompt.turn_start("user"))

    def add_text(self, text: str) -> None:
        self.feed_ids(self.prompt.text(text))

    def add_audio_tokens(self, tokens: torch.Tensor) -> None:
        """Audio features [n, C] between their start and end tokens (recalled audio), one id per token."""
        raise NotImplementedError

    def add_image_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> None:
        """Vision features [n, C] of an image grid (1, h, w) with their start/end tokens (a recalled frame)."""
        raise NotImplementedError

    def end_user_turn(self, recalled: Sequence[SlotPiece] = ()) -> torch.Tensor:
        """Close the user turn, open the assistant's; returns the logits [V] of the first reply token.

        `recalled`: the recalled-memory slot, placed as a system turn between the two (text lines, audio as
        <|audio_bos|> features <|audio_eos|>, frames as images), at the next TMRoPE ids as any prompt would
        place them: new ids above the history, so the distances stay inside the cache's window."""
        if self._segment_open():
            raise RuntimeError("an audio or video segment is still open: end it before ending the turn")
        if recalled:
            p, t = self.prompt, self.thinker.cfg.tokens
            parts = [self._text_part(p.turn_end() + p.turn_start("system"))]
            for piece in recalled:
                if isinstance(piece, str):
                    parts.append(self._text_part(p.text(piece)))
                    continue
                audio = piece.kind == "audio"
                parts.append(self._text_part([t.audio_start if audio else t.vision_start]))
                where = self.cursor.audio(piece.tokens.shape[0]) if audio else self.cursor.image(piece.grid)
                parts.append(PromptPart(piece.tokens.to(self.thinker.lm.dtype), where, None, piece.kind))
                parts.append(self._text_part([t.audio_end if audio else t.vision_end]))
            parts.append(self._text_part(p.turn_end() + p.turn_start("assistant")))
            self._feed_parts(parts)  # one forward for the whole slot, not one per line and frame
        else:
            self.feed_ids(self.prompt.generation_prompt())
        assert self.logits is not None
        return self.logits

    def generate(self, sampling: SamplingConfig, stop_ids: frozenset[int]) -> Generator[int, None, None]:
        """Yield reply token ids; each is prefilled at the next text position (TMRoPE decode: max + 1).
        After the reply (stop token, max_new_tokens or the caller closing the iterator) <|im_end|>\\n is fed."""
        return run_alone(self._generate_steps(sampling, stop_ids))

    def _generate_steps(
        self, sampling: SamplingConfig, stop_ids: frozenset[int]
    ) -> Generator[int | PoolStep, Any, None]:
        """`generate`, yielding each token's decode step as a `PoolStep` (omni/model/lm/batch.py) for its driver to run
        (a session without a pool row feeds its tokens itself and yields none)."""
        if self.logits is None:
            raise RuntimeError("nothing prefilled: call end_user_turn() first")
        dev = self.thinker.device
        sampler = SamplerState.create(self.thinker.lm.cfg.vocab_size, seed=sampling.seed, device=dev)
        try:
            for _ in range(sampling.max_new_tokens):
                token = int(sample(self.logits[None], sampling, sampler)[0])
                if token in stop_ids:
                    break
                sampler.observe(torch.tensor([[token]], device=dev))
                yield token
                yield from self._decode_step(token)
        finally:
            self.feed_ids(self.prompt.turn_end())

    def _decode_step(self, token: int) -> Generator[PoolStep, Any, None]:
        """Feed one reply token at the next text position: a `PoolStep` whose driver runs it alone or batched with
        other sessions' (either family: the pooled decode step runs dense and MoE MLPs alike). Its taps are not
        kept: a reply's tokens are no Talker's input."""
        at = self.cursor.next_id
        positions = self.cursor.text(1)  # [3, 1]
        self.state.next_position = int(positions.max())  # where a batched step puts it (BatchedDecoder.decode)
        x = self.thinker.lm.embed_tokens(torch.tensor([token], device=self.thinker.device))

        def alone() -> tuple[torch.Tensor, torch.Tensor | None]:
            out = self.thinker.lm(self.state, inputs_embeds=x[None], positions=positions[:, None].to(x.device),
                                  return_hidden=True)
            assert out.logits is not None and out.hidden is not None
            return out.logits, out.hidden[:, -1]

        try:
            logits, hidden = yield PoolStep(self.pool, self.sid, token, alone)
        except GeneratorExit:  # closed before the step ran (its driver answers a step at once): never fed
            self.cursor.next_id = at
            raise
        assert hidden is not None
        self._decoded(x, positions, logits, hidden)

    def _decoded(self, x: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor) -> None:
        """After a decode step of input embedding x [1, C] at positions [3, 1]: logits [1, V], hidden [1, C]."""
        self.logits = logits[0]
        self.prefilled_tokens += 1

    def respond(
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | ReplyRecord, None, None]:
        """The reply to the ended user turn as text: TokenText events as tokens complete text, then a
        ReplyRecord. Close the iterator to cancel; the session stays usable (`generate` feeds the turn end)."""
        return run_alone(self.respond_steps(sampling, stop_ids))

    def respond_steps(
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | ReplyRecord | PoolStep, Any, None]:
        """`respond`, yielding every decode step as a `PoolStep` for its driver to run (alone or batched with other
        sessions', omni/model/lm/batch.py `run_steps`) and send back its result."""
        tokens: list[int] = []
        text = yield from self._decode_reply(sampling, stop_ids, tokens)
        yield ReplyRecord(text, tokens, [], 0, time.monotonic())

    def _decode_reply(
        self,
        sampling: SamplingConfig,
        stop_ids: frozenset[int] | None,
        tokens: list[int],
        each: Callable[[list[int]], Iterator[T]] | None = None,
    ) -> Generator[TokenText | T | PoolStep, Any, str]:
        """Decode the reply, appending its token ids to `tokens`: yields a TokenText whenever a token completes
        text, then what `each(tokens)` yields, and the decode steps (`PoolStep`s); returns the whole text.
        Closing it feeds the turn end."""
        if self.tokenizer is None:
            raise RuntimeError("respond() needs the session's tokenizer")
        stops = (
            stop_ids if stop_ids is not None else frozenset(sampling.stop_token_ids or self.tokenizer.stop_token_ids)
        )
        detok = IncrementalDetokenizer(self.tokenizer)
        gen = self._generate_steps(sampling, stops)
        send: Any = None
        try:
            while True:
                try:
                    token = gen.send(send)
                except StopIteration:
                    break
                if isinstance(token, PoolStep):
                    send = yield token
                    continue
                send = None
                tokens.append(token)
                delta = detok.push(token)
                if delta:
                    yield TokenText(delta, token, time.monotonic())
                if each is not None:
                    yield from each(tokens)
            return detok.text()
        finally:
            gen.close()  # feeds the turn end if the reply was cut short

    # ---- undo ------------------------------------------------------------------------------------------------

    def mark(self) -> ThinkerMark:
        """The current point of the conversation, to `rollback` to later."""
        return ThinkerMark(
            self.state.cache.length, self.state.next_position, self.cursor.next_id, self.prefilled_tokens, self.logits
        )

    def rollback(self, mark: ThinkerMark) -> None:
        """Forget every position prefilled since `mark`.

        Exact while the tokens dropped are at most the cache's `chunk` (KVCache.truncate: beyond that, window
        tokens they overwrote stay forgotten); the caller keeps what it rolls back that short. Not with an
        audio/video segment open."""
        if self._segment_open():
            raise RuntimeError("rollback() with an audio or video segment open")
        if mark.thinker_tokens > self.state.cache.length:
            raise ValueError("rollback() to a mark ahead of the session (a mark of another session?)")
        self.state.cache.truncate(mark.thinker_tokens)
        self._forget_encoded(mark.thinker_tokens)
        self.state.next_position = mark.thinker_position
        self.cursor.next_id = mark.next_id
        self.prefilled_tokens = mark.prefilled_tokens
        self.logits = mark.logits

    def _roll_back(self, cache_length: int, next_id: int) -> None:
        """Forget the cache from `cache_length` on and place the next piece at `next_id` again. (Exact unless
        the cache has wrapped and more than its `chunk` of slack is dropped: then the oldest window tokens the
        dropped ones overwrote stay forgotten, as `KVCache.truncate` says.)"""
        self.prefilled_tokens -= self.state.cache.length - cache_length
        self.state.cache.truncate(cache_length)
        self._forget_encoded(cache_length)
        self.cursor.next_id = next_id

    # ---- segments ------------------------------------------------------------------------------------------

    def _segment_open(self) -> bool:
        """Whether a live audio or video segment is open (turns end and rollbacks wait for its end)."""
        raise NotImplementedError

    def _check_idle(self) -> None:
        if self._segment_open():
            raise RuntimeError("an audio or video segment is still open")

    def _merged(self, grid_hw: tuple[int, int]) -> tuple[int, int]:
        m = self.cursor.cfg.spatial_merge_size
        return grid_hw[0] // m, grid_hw[1] // m
