"""One conversation with the Thinker, prefilled piece by piece while the user is still talking.

`ThinkerSession` owns the per-session state (bounded KV cache, TMRoPE cursor, encoder streaming states) and
feeds each completed piece into the cache at once: a completed 2-s audio block (50 tokens), a completed
temporal patch of video (2 frames = 1 s), text. Because every piece's positions depend only on what came
before, the cache then holds exactly what `Thinker.prompt_logits` computes for the whole prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import torch

from omni.model.encoders.audio_encoder import AudioEncoderState
from omni.model.encoders.audio_frontend import LogMelState
from omni.model.encoders.vision_encoder import VisionEncoderState
from omni.model.encoders.vision_preprocess import VisionInputError
from omni.model.lm.batch import BatchedDecoder, PoolStep, run_alone
from omni.model.lm.decoder import DecoderLM, DecoderState, LayerAdds
from omni.model.lm.detokenizer import IncrementalDetokenizer
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import SPEECH_SYSTEM_PROMPT, PromptBuilder
from omni.model.thinker import Thinker
from omni.model.tmrope import (
    MultimodalTokenIds,
    PositionCursor,
    StreamingVideoPositions,
    TMRoPEConfig,
    flat_positions,
    patch_time_offsets,
)

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


@dataclass
class _AudioSegment:
    """The open `push_audio` segment: its log-mel before the 80 dB floor and where each prefilled block starts.

    Offline, the floor sits 80 dB below the loudest value of the whole clip; live, only the loudest so far is
    known. A block prefilled while the turn was quiet is therefore floored again, re-encoded and prefilled again
    (with every block after it, whose cache entries attend to it) when a louder part raises the peak enough to
    change it. Quiet lead-ins make this happen near a turn's start; later blocks rarely change. Kept until
    `end_audio`: 100 KB of log-mel per 2-s block (128 bins x 200 frames x 4 bytes).
    """

    mel: LogMelState
    blocks: list[torch.Tensor]  # [n_mels, 200] log10 mel of each complete block
    pending: torch.Tensor  # [n_mels, < 200] log10 mel of the block being filled
    marks: list[tuple[int, int]]  # (cache length, cursor id) where each prefilled block starts
    floors: list[tuple[float, float]]  # per prefilled block: (its quietest value, the peak it was floored at)


@dataclass
class _AVStream:
    """One live video-with-audio segment: encoded pieces waiting for their turn in the 2-s interleave."""

    video: StreamingVideoPositions
    audio_start: int
    grid_hw: tuple[int, int]
    video_queue: list[tuple[int, torch.Tensor]]  # (chunk index, tokens of one temporal patch)
    audio_queue: list[torch.Tensor]  # tokens of audio chunk len(sent) + i
    audio_sent: int = 0  # audio tokens prefilled so far
    chunk: int = 0  # the chunk being laid out
    phase: str = "video"  # which half of `chunk` is being laid out
    cuts: int = 0  # chunk index of the last encoded video patch
    video_done: bool = False
    audio_done: bool = False


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
    ) -> None:
        """`tap_layer` k: every fed piece's input embeddings and the hidden states entering layer k are kept for
        `take_taps` (a Talker that reads them). `pool`, `sid`: the session's cache is row `sid` of this pool of
        the Thinker's decoder (its `cache` config), so the decode steps of `respond_steps` can run batched with
        other sessions' (omni/model/lm/batch.py); None: a cache of its own."""
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


class ThinkerSession(ConversationSession):
    """One conversation with the Thinker: bounded KV cache, TMRoPE cursor, encoder streaming states.

    Typical turn: `start_user_turn()`, then any of `add_text`, `begin_audio`/`push_audio`/`end_audio`,
    `add_image`, `begin_video`/`push_video_frame`/`end_video`, `begin_av`/`push_av_audio`/`push_av_frame`/
    `end_av`; then `end_user_turn()` and `generate(...)`. Every push prefills at once what it completes.
    Not thread-safe: drive it from one worker.
    """

    def __init__(
        self,
        thinker: Thinker,
        prompt: PromptBuilder,
        system_prompt: str | None = SPEECH_SYSTEM_PROMPT,
        cache: CacheConfig | None = None,
        tokenizer: TextTokenizer | None = None,
        pool: BatchedDecoder | None = None,
        sid: int | None = None,
    ) -> None:
        """`tokenizer`: needed by `respond` only (text out). `pool`, `sid`: a row of a pool of the Thinker's
        decoder as the session's cache, so its decode steps can batch (ConversationSession)."""
        super().__init__(thinker, prompt, thinker.cfg.rope, cache, tokenizer, pool=pool, sid=sid)
        self.thinker: Thinker = thinker
        self._segment: _AudioSegment | None = None
        self._mel: LogMelState | None = None  # the video-with-audio stream's front end
        self._audio: AudioEncoderState | None = None
        self._video: tuple[VisionEncoderState, StreamingVideoPositions] | None = None
        self._av: _AVStream | None = None
        if system_prompt is not None:
            self.feed_ids(prompt.system_turn(system_prompt))

    # ---- prefill primitives ------------------------------------------------------------------------------

    def _shared_special(self, ids: Sequence[int]) -> None:  # the paired bos/eos of a video with audio
        x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
        self._feed(x, self.cursor.shared(len(ids)))

    def _segment_open(self) -> bool:
        return self._audio is not None or self._video is not None or self._av is not None

    def _settled_length(self) -> int:
        seg = self._segment  # any prefilled block of an audio segment may be floored again until its end
        return seg.marks[0][0] if seg is not None and seg.marks else self.state.cache.length

    # ---- audio ---------------------------------------------------------------------------------------------

    def begin_audio(self) -> None:
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.audio_start])
        self._encoded.segment_start = self.cursor.next_id
        empty = torch.zeros(self.thinker.mel.n_mels, 0, device=self.thinker.device)
        self._segment = _AudioSegment(self.thinker.mel.init_state(self.thinker.device), [], empty, [], [])
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)

    def push_audio(self, pcm16k: torch.Tensor) -> int:
        """16 kHz mono samples; prefills every 2-s block they complete (and again, floored as offline, any
        earlier block a louder part changes). Returns how many audio tokens the cache gained."""
        seg = self._segment
        if seg is None or self._audio is None:
            raise RuntimeError("push_audio() outside begin_audio()/end_audio()")
        if self._audio.n_blocks or self._audio.n_pending:
            raise RuntimeError("push_audio() after push_audio_features() in one audio segment")
        log10 = self.thinker.mel.step_log10(seg.mel, pcm16k.to(self.thinker.device))
        return self._prefill_segment(seg, log10)

    def push_audio_features(self, mel: torch.Tensor) -> int:
        """Log-mel frames [n_mels, t] (when the caller runs the front-end itself)."""
        if self._audio is None:
            raise RuntimeError("audio pushed outside begin_audio()/end_audio()")
        if self._segment is not None and self._segment.mel.n_seen:
            raise RuntimeError("push_audio_features() after push_audio() in one audio segment")
        tokens = self.thinker.audio_tower.step(self._audio, mel.to(self.thinker.device)).to(self.thinker.lm.dtype)
        for i in range(0, tokens.shape[0], self.cursor.cfg.ids_per_chunk):  # one piece per 2-s block
            block = tokens[i : i + self.cursor.cfg.ids_per_chunk]
            self._feed_encoded("audio", block, self.cursor.audio(block.shape[0]))
        return tokens.shape[0]

    def end_audio(self) -> int:
        """Encode the partial last block, prefill it and <|audio_eos|>. Returns how many audio tokens the
        cache gained."""
        if self._audio is None:
            raise RuntimeError("end_audio() without begin_audio()")
        seg, n = self._segment, 0
        if seg is not None and seg.mel.n_seen:
            n = self._prefill_segment(seg, self.thinker.mel.flush_log10(seg.mel), final=True)
        else:
            tokens = self.thinker.audio_tower.flush(self._audio).to(self.thinker.lm.dtype)
            self._feed_encoded("audio", tokens, self.cursor.audio(tokens.shape[0]))
            n = tokens.shape[0]
        self._segment = self._audio = None
        self.feed_ids([self.thinker.cfg.tokens.audio_end])
        return n

    def _prefill_segment(self, seg: _AudioSegment, log10: torch.Tensor, final: bool = False) -> int:
        """Take new log10 frames [n_mels, t]; prefill every complete block (at the end also the partial last
        one) floored at the peak so far, after rolling back to the first prefilled block the peak changed."""
        before = self.state.cache.length
        block = self.thinker.audio_tower.cfg.block_frames
        peak = seg.mel.running_max
        pending = torch.cat([seg.pending, log10], dim=1)  # the < 200 frames left over, then the new ones
        while pending.shape[1] >= block:
            seg.blocks.append(pending[:, :block])
            pending = pending[:, block:]
        seg.pending = pending
        # a block changes when the floor (peak - 8 log10 units = 80 dB) rises past its quietest value
        changed = [k for k, (low, used) in enumerate(seg.floors) if used < peak and low < peak - 8.0]
        if changed:
            self._roll_back(*seg.marks[changed[0]])
            del seg.marks[changed[0] :], seg.floors[changed[0] :]
        last = seg.blocks + ([seg.pending] if final and seg.pending.shape[1] else [])
        for frames in last[len(seg.marks) :]:
            seg.marks.append((self.state.cache.length, self.cursor.next_id))
            seg.floors.append((float(frames.min()), peak))
            tokens = self.thinker.audio_tower.encode_blocks(self.thinker.mel.finish(frames, peak)[None])[0]
            tokens = tokens.to(self.thinker.lm.dtype)
            self._feed_encoded("audio", tokens, self.cursor.audio(tokens.shape[0]))
        return self.state.cache.length - before

    # ---- images and video ------------------------------------------------------------------------------------

    def add_image(self, patches: torch.Tensor, grid: Sequence[int]) -> None:
        """A preprocessed image (see vision_preprocess.preprocess_image) with its bos/eos tokens. Its features are
        kept for memory (`take_encoded`) as a video patch of one frame at offset 0."""
        self._check_idle()
        tokens = self.thinker.encode_vision(patches, grid).to(self.thinker.lm.dtype)
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        positions = self.cursor.image(grid)
        self._encoded.segment_start = int(positions[0].min())
        self._feed_encoded("video", tokens, positions, self._merged((int(grid[1]), int(grid[2]))))
        self.feed_ids([t.vision_end])

    def add_image_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> None:
        """Vision features [n, C] of an image grid (1, h, w) in 14-px patches (n = h * w / merge^2), with
        their bos/eos tokens: an encoded image, or a recalled frame."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        self._feed(tokens.to(self.thinker.lm.dtype), self.cursor.image(grid))
        self.feed_ids([t.vision_end])

    def add_audio_tokens(self, tokens: torch.Tensor) -> None:
        """Audio features [n, C] between <|audio_bos|> and <|audio_eos|> (recalled audio), one id per token."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.audio_start])
        self._feed(tokens.to(self.thinker.lm.dtype), self.cursor.audio(tokens.shape[0]))
        self.feed_ids([t.audio_end])

    def begin_video(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video of normalised frames height x width (multiples of 28 px), 2 / seconds_per_grid fps."""
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.vision_start])
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._encoded.segment_start = self.cursor.next_id
        self._video = (enc, StreamingVideoPositions(self.cursor.next_id, seconds_per_grid))

    def push_video_frame(self, frame: torch.Tensor) -> int:
        """One normalised frame [3, H, W]; every second frame completes a temporal patch, prefilled at once."""
        if self._video is None:
            raise RuntimeError("push_video_frame() outside begin_video()/end_video()")
        enc, pos = self._video
        return self._feed_patch(enc, pos, self.thinker.visual.step(enc, frame.to(self.thinker.device)))

    def end_video(self) -> None:
        if self._video is None:
            raise RuntimeError("end_video() without begin_video()")
        enc, pos = self._video
        self._feed_patch(enc, pos, self.thinker.visual.flush(enc))
        if pos.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_video()")
        self._video = None
        self.feed_ids([self.thinker.cfg.tokens.vision_end])

    def _feed_patch(self, enc: VisionEncoderState, pos: StreamingVideoPositions, tokens: torch.Tensor) -> int:
        if tokens.shape[0] == 0:
            return 0
        grid = (enc.layout.gh, enc.layout.gw)
        x = tokens.to(self.thinker.lm.dtype)
        self._feed_encoded("video", x, pos.next_patch(self.cursor, grid), self._merged(grid))
        return tokens.shape[0]

    # ---- video with its audio (2-s interleave) ---------------------------------------------------------------

    def begin_av(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video whose audio track is interleaved with it (use_audio_in_video)."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self._shared_special([t.vision_start, t.audio_start])
        start = self._encoded.segment_start = self.cursor.next_id
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._video = (enc, StreamingVideoPositions(start, seconds_per_grid))
        self._mel = self.thinker.mel.init_state(self.thinker.device)
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)
        p = self.thinker.cfg.vision.patch_size
        self._av = _AVStream(self._video[1], start, (height // p, width // p), [], [])

    def push_av_frame(self, frame: torch.Tensor) -> None:
        av, (enc, _) = self._need_av()
        tokens = self.thinker.visual.step(enc, frame.to(self.thinker.device))
        self._queue_patch(av, tokens)
        self._pump(av)

    def push_av_audio(self, pcm16k: torch.Tensor) -> None:
        av, _ = self._need_av()
        assert self._mel is not None
        self._queue_audio(av, self.thinker.mel.step(self._mel, pcm16k.to(self.thinker.device)))
        self._pump(av)

    def push_av_audio_features(self, mel: torch.Tensor) -> None:
        av, _ = self._need_av()
        self._queue_audio(av, mel.to(self.thinker.device))
        self._pump(av)

    def end_av(self) -> None:
        av, (enc, _) = self._need_av()
        assert self._mel is not None and self._audio is not None
        self._queue_patch(av, self.thinker.visual.flush(enc))
        if self._mel.n_seen:
            self._queue_audio(av, self.thinker.mel.flush(self._mel))
        tail = self.thinker.audio_tower.flush(self._audio)
        if tail.shape[0]:
            av.audio_queue.append(tail.to(self.thinker.lm.dtype))
        if av.video.n_patches + len(av.video_queue) == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_av()")
        av.video_done = av.audio_done = True
        self._pump(av)
        self._video = self._av = None
        self._mel = self._audio = None
        t = self.thinker.cfg.tokens
        self._shared_special([t.audio_end, t.vision_end])

    def _need_av(self) -> tuple[_AVStream, tuple[VisionEncoderState, StreamingVideoPositions]]:
        if self._av is None or self._video is None:
            raise RuntimeError("video-with-audio input outside begin_av()/end_av()")
        return self._av, self._video

    def _queue_patch(self, av: _AVStream, tokens: torch.Tensor) -> None:
        if tokens.shape[0] == 0:
            return
        k = av.video.n_patches + len(av.video_queue)  # this patch's index
        offset = int(patch_time_offsets(k + 1, av.video.seconds_per_grid, self.cursor.cfg.position_id_per_seconds)[k])
        if k and offset >= (av.cuts + 1) * self.cursor.cfg.ids_per_chunk:
            av.cuts += 1
        av.video_queue.append((av.cuts, tokens.to(self.thinker.lm.dtype)))

    def _queue_audio(self, av: _AVStream, mel: torch.Tensor) -> None:
        assert self._audio is not None
        tokens = self.thinker.audio_tower.step(self._audio, mel)  # whole 2-s blocks = whole 50-id chunks
        per = self.cursor.cfg.ids_per_chunk
        for i in range(0, tokens.shape[0], per):
            av.audio_queue.append(tokens[i : i + per].to(self.thinker.lm.dtype))

    def _video_chunk_complete(self, av: _AVStream) -> bool:
        """No more video patches can fall into chunk `av.chunk`."""
        if av.video_done or av.video_queue:
            return av.video_done or av.video_queue[0][0] > av.chunk
        k = av.video.n_patches  # the next patch to arrive, predicted: its time offset is known in advance
        if k == 0:
            return False
        offset = int(patch_time_offsets(k + 1, av.video.seconds_per_grid, self.cursor.cfg.position_id_per_seconds)[k])
        return av.cuts + int(offset >= (av.cuts + 1) * self.cursor.cfg.ids_per_chunk) > av.chunk

    def _pump(self, av: _AVStream) -> None:
        """Prefill everything whose place in the interleave is settled: chunk by chunk, video then audio."""
        while True:
            if av.phase == "video":
                while av.video_queue and av.video_queue[0][0] == av.chunk:
                    _, tokens = av.video_queue.pop(0)
                    self._feed_encoded("video", tokens, av.video.next_patch(self.cursor, av.grid_hw),
                                       self._merged(av.grid_hw))
                if not self._video_chunk_complete(av):
                    return
                av.phase = "audio"
            if av.audio_queue:
                tokens = av.audio_queue.pop(0)
                start = av.audio_start + av.audio_sent
                self._feed_encoded("audio", tokens, self.cursor.place(flat_positions(start, tokens.shape[0])))
                av.audio_sent += tokens.shape[0]
            elif not av.audio_done:
                return
            if av.video_done and av.audio_done and not av.video_queue and not av.audio_queue:
                return
            av.chunk += 1
            av.phase = "video"
