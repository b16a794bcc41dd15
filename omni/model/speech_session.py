"""A spoken conversation: the Thinker session plus the Talker's prompt track and streaming token2wav.

`SpeakingSession` is a `ThinkerSession` that also turns every prefilled Thinker position into a Talker slot
(Thinker final-norm hidden + input embedding; the embedding is zero where an encoder's features were fed,
as the reference zeroes audio/image/video positions) and prefills it into the Talker's cache as it goes, so
the Talker has its prompt ready when the reply starts. `respond` then yields text deltas and PCM chunks as
they are made: Thinker token -> Talker codec step (one text slot per step; it starts after the first text
token) -> token2wav sliding-window chunk. Closing the `respond` iterator (barge-in) stops everything at once
and leaves the session consistent: the Thinker's history holds the reply tokens it had fed plus the turn
end, and the Talker's prompt track holds exactly the same positions (its speech track is dropped).

Batched with other sessions: given `SessionRows`, the session's Thinker and Talker caches are rows of the
engine's `BatchedDecoder` pools, and `respond_steps` (what `respond` runs alone) yields every Thinker token's and
every Talker code's decode step as a `PoolStep` for the device worker to run together with other sessions'
(omni/model/lm/batch.py `run_steps`); the batched Thinker step returns the final-norm hidden state too, from which
`_decoded` makes the token's Talker slot as `_feed` does. Given a shared `StreamingToken2Wav` too
(`SessionRows.token2wav`), every token2wav chunk is a `PoolStep` as well: the chunks of sessions that are due
together decode as one batched DiT solve and vocoder call (omni/model/token2wav/streaming.py `decode`). Prefill and
the Talker's two reply-start positions run per session.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from omni.model.code2wav import StreamingCode2Wav
from omni.model.conversation import PromptPart, ReplyRecord, ThinkerMark, TokenText
from omni.model.lm.batch import BatchedDecoder, PoolStep, run_alone
from omni.model.lm.decoder import LayerAdds
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.loaders.talker_weights import SpeechModels
from omni.model.prompt import SPEECH_SYSTEM_PROMPT, PromptBuilder
from omni.model.talker import Talker, TalkerState, TalkerTextEmbeds
from omni.model.thinker import Thinker
from omni.model.thinker_session import ThinkerSession
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import ChunkJob, PCMChunk, StreamingSchedule, StreamingToken2Wav, Token2WavState

ReplyEvent = TokenText | PCMChunk | ReplyRecord


@dataclass(frozen=True)
class SessionRows:
    """A session's cache rows in the Thinker's and the Talker's `BatchedDecoder` pools (None: not pooled), and the
    Qwen3-Omni Talker's code predictor's."""

    thinker: BatchedDecoder | None = None
    thinker_sid: int | None = None
    talker: BatchedDecoder | None = None
    talker_sid: int | None = None
    predictor: BatchedDecoder | None = None
    predictor_sid: int | None = None
    token2wav: StreamingToken2Wav | None = None  # shared by the sessions whose speech chunks batch together
    code2wav: StreamingCode2Wav | None = None  # the same for Qwen3-Omni's Code2Wav chunks


@dataclass(frozen=True)
class SessionMark(ThinkerMark):
    """`ThinkerMark` plus where the Talker's cache stood."""

    talker_tokens: int
    talker_position: int


@dataclass
class SpeechSettings:
    voice: str | None = None  # None: the checkpoint's default voice (Chelsie)
    talker_sampling: SamplingConfig | None = None  # None: the checkpoint's defaults
    seed: int | None = None  # Talker sampling and token2wav noise
    schedule: StreamingSchedule = field(default_factory=StreamingSchedule)
    solver: SolverConfig = field(default_factory=SolverConfig)
    max_codes: int = 4096
    compile_token2wav: bool | None = None  # torch.compile token2wav (None: OMNI_TOKEN2WAV_COMPILE; streaming.py)


class SpeakingSession(ThinkerSession):
    def __init__(
        self,
        thinker: Thinker,
        prompt: PromptBuilder,
        tokenizer: TextTokenizer,
        speech: SpeechModels,
        settings: SpeechSettings | None = None,
        system_prompt: str | None = SPEECH_SYSTEM_PROMPT,
        cache: CacheConfig | None = None,
        talker_cache: CacheConfig | None = None,
        rows: SessionRows | None = None,
    ) -> None:
        """`rows`: the session's cache rows in the engine's Thinker and Talker pools, so that its decode steps
        can run batched with other sessions' (`respond_steps`); None: caches of its own."""
        self.speech = speech
        self.settings = settings or SpeechSettings()
        self.voice = speech.voices.get(self.settings.voice)
        talker = speech.talker
        texts = TalkerTextEmbeds.from_table(thinker.lm.embed_tokens.weight, talker.cfg, self.voice.bos_token)
        sampling = self.settings.talker_sampling or talker.cfg.sampling(seed=self.settings.seed)
        rows = rows or SessionRows()
        pooled = rows.talker_sid is not None
        self.talker_pool, self.talker_sid = (rows.talker, rows.talker_sid) if pooled else (None, None)
        row_state = None
        if self.talker_pool is not None and self.talker_sid is not None:
            if talker_cache is not None and talker_cache != self.talker_pool.cache_cfg:
                raise ValueError("the session's Talker cache config differs from its pool's")
            row_state = self.talker_pool.sessions[self.talker_sid].state
        self.talker_state: TalkerState = talker.init_state(texts, sampling, seed=self.settings.seed, cache=talker_cache,
                                                           decoder=row_state)
        shared = rows.token2wav
        if shared is not None and (shared.model is not speech.token2wav or shared.schedule != self.settings.schedule
                                   or shared.solver != self.settings.solver):
            raise ValueError("the shared token2wav streamer differs from the session's model, schedule or solver")
        self._shared_streamer = shared
        self.streamer = shared or StreamingToken2Wav(speech.token2wav, self.settings.schedule, self.settings.solver,
                                                     self.settings.compile_token2wav)
        self._text_input = False  # the positions being fed hold token embeddings (not encoder features)
        self._text_mask: torch.Tensor | None = None  # per position, when one feed mixes both (`_feed_parts`)
        self._replying = False
        self._reply_slots: list[tuple[torch.Tensor, torch.Tensor]] = []  # (slots [1, T, E], positions [3, T])
        self._turns = 0
        super().__init__(thinker, prompt, system_prompt=system_prompt, cache=cache, tokenizer=tokenizer,
                         pool=rows.thinker, sid=rows.thinker_sid)

    # ---- the Talker's prompt track: every prefilled Thinker position --------------------------------------

    def feed_ids(self, ids: Sequence[int]) -> None:
        self._text_input = True
        try:
            super().feed_ids(ids)
        finally:
            self._text_input = False

    def _shared_special(self, ids: Sequence[int]) -> None:
        self._text_input = True
        try:
            super()._shared_special(ids)
        finally:
            self._text_input = False

    def _feed_parts(self, parts: Sequence[PromptPart]) -> None:
        mask = torch.cat([torch.full((p.x.shape[0],), p.ids is not None, dtype=torch.bool) for p in parts])
        self._text_mask = mask.to(parts[0].x.device)
        try:
            super()._feed_parts(parts)
        finally:
            self._text_mask = None

    def _feed(self, x: torch.Tensor, positions: torch.Tensor, adds: LayerAdds | None = None) -> None:
        # ConversationSession._feed (x [T, C], positions [3, T]; no DeepStack in Qwen2.5-Omni), plus the final-norm
        # hidden states the Talker needs.
        if adds is not None:
            raise ValueError("Qwen2.5-Omni has no DeepStack residuals")
        if x.shape[0] == 0:
            return
        out = self.thinker.lm(
            self.state, inputs_embeds=x[None], positions=positions[:, None].to(x.device), return_hidden=True
        )
        assert out.logits is not None and out.hidden is not None
        self.logits = out.logits[0]
        self.prefilled_tokens += x.shape[0]
        if self._text_mask is not None:  # token embeddings are added at text positions only
            slots = out.hidden + torch.where(self._text_mask[:, None], x, torch.zeros_like(x))[None]
        else:
            slots = out.hidden + x[None] if self._text_input else out.hidden
        if self._replying:
            self._reply_slots.append((slots, positions))
        else:
            self.speech.talker.feed_prompt(self.talker_state, slots, positions[:, None].to(slots.device))

    def _decoded(self, x: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor) -> None:
        # ThinkerSession._decoded, plus the token's Talker slot (as `_feed` makes it for text input).
        super()._decoded(x, positions, logits, hidden)
        slots = (hidden + x)[None]  # [1, 1, E]
        if self._replying:
            self._reply_slots.append((slots, positions))
        else:
            self.speech.talker.feed_prompt(self.talker_state, slots, positions[:, None].to(slots.device))

    # ---- undo -------------------------------------------------------------------------------------------

    def mark(self) -> SessionMark:
        """The current point of the conversation in both caches, to `rollback` to later."""
        if self._replying or self.talker_state.reply_start is not None:
            raise RuntimeError("mark() during a reply: close the respond iterator first")
        talker = self.talker_state.decoder
        return SessionMark(**vars(super().mark()), talker_tokens=talker.cache.length,
                           talker_position=talker.next_position)

    def rollback(self, mark: ThinkerMark) -> None:
        """Forget every position prefilled since `mark` (a `SessionMark`) in the Thinker's and the Talker's
        caches; exact under the same bound as `ThinkerSession.rollback`. Not during a reply."""
        if self._replying or self.talker_state.reply_start is not None:
            raise RuntimeError("rollback() during a reply: close the respond iterator first")
        if not isinstance(mark, SessionMark):
            raise TypeError("SpeakingSession.rollback() takes a SessionMark (from its own mark())")
        talker = self.talker_state.decoder
        if mark.talker_tokens > talker.cache.length:
            raise ValueError("rollback() to a mark ahead of the session (a mark of another session?)")
        super().rollback(mark)
        talker.cache.truncate(mark.talker_tokens)
        talker.next_position = mark.talker_position

    # ---- one spoken reply ------------------------------------------------------------------------------

    def respond(  # type: ignore[override]  # its events include PCMChunk
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None, speak: bool = True
    ) -> Generator[ReplyEvent, None, None]:
        """Generate the reply to the ended user turn: TokenText and PCMChunk events as they are made, then
        ReplyRecord. Close the iterator to cancel (barge-in); the session stays usable."""
        return run_alone(self.respond_steps(sampling, stop_ids, speak))

    def respond_steps(  # type: ignore[override]  # its events include PCMChunk
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None, speak: bool = True
    ) -> Generator[ReplyEvent | PoolStep, Any, None]:
        """`respond`, yielding every Thinker and Talker decode step as a `PoolStep` for its driver to run (alone
        or batched with other sessions', omni/model/lm/batch.py `run_steps`) and send back its result."""
        talker, st = self.speech.talker, self.talker_state
        wav: Token2WavState | None = None
        if speak:
            seed = None if self.settings.seed is None else self.settings.seed + self._turns
            wav = self.streamer.init_state(
                self.voice.cond, self.voice.ref_mel, seed=seed, max_codes=self.settings.max_codes
            )
            st.sampler.generator.manual_seed(seed if seed is not None else torch.seed())
        self._turns += 1
        self._replying, self._reply_slots = True, []
        tokens: list[int] = []
        codes: list[int] = []
        samples, used = 0, 0

        def talk(tokens: list[int]) -> Generator[PCMChunk | PoolStep, Any, None]:
            nonlocal used
            if wav is not None:  # slots of all tokens but the newest are known now
                used = yield from self._talk(tokens, used, codes, wav, final=False)

        try:
            text = yield from self._decode_reply(sampling, stop_ids, tokens, talk)
            if wav is not None:
                used = yield from self._talk(tokens, used, codes, wav, final=True)
                job = self.streamer.final(wav)
                if job is not None:
                    yield (yield self._chunk_step(job))
                samples = wav.samples_out
            yield ReplyRecord(text, tokens, codes, samples, time.monotonic())
        finally:
            self._replying = False
            talker.end_reply(st)
            for slots, positions in self._reply_slots:
                talker.feed_prompt(st, slots, positions[:, None].to(slots.device))
            self._reply_slots = []

    def _talk(
        self, tokens: list[int], used: int, codes: list[int], wav: Token2WavState, final: bool
    ) -> Generator[PCMChunk | PoolStep, Any, int]:
        """Hand the Talker the text slots that became known; run every codec step that can run now."""
        talker, st = self.speech.talker, self.talker_state
        known = len(tokens) if final else len(tokens) - 1  # the newest token's slot comes with the next one
        slots = [s for s, _ in self._reply_slots][:known]  # one slot per reply token, in order
        while used < known:
            slot = slots[used][0]
            if used == 0:
                m = int(self._reply_slots[0][1].max()) - 1  # max prompt position (first reply token sits at m + 1)
                pos = torch.tensor([m + 1, m + 2], device=slot.device).expand(3, 1, 2)
                code = talker.choose(st, talker.begin_reply(st, slot, pos))
                if code not in st.sampling.stop_token_ids:
                    codes.append(code)
                    yield from self._to_audio(code, wav)
            else:
                talker.push_text(st, slot)
            used += 1
        if final and st.last_code is not None:
            talker.end_text(st)
        while talker.can_step(st):
            x = talker.decode_input(st)
            logits, _ = yield PoolStep(self.talker_pool, self.talker_sid, x, partial(_talker_step, talker, st, x))
            code = talker.choose(st, logits.float())
            if code in st.sampling.stop_token_ids:
                break
            codes.append(code)
            yield from self._to_audio(code, wav)
        return used

    def _to_audio(self, code: int, wav: Token2WavState) -> Generator[PCMChunk | PoolStep, Any, None]:
        """Add the code to the turn's audio; every chunk that became decodable as a `PoolStep`, then its PCM."""
        if wav.n_codes >= wav.codes.shape[1]:
            return  # the turn's audio is at max_codes: the rest of the speech track is dropped
        self.streamer.append(wav, [code])
        while (job := self.streamer.due(wav)) is not None:
            yield (yield self._chunk_step(job))

    def _chunk_step(self, job: ChunkJob) -> PoolStep:
        """A token2wav chunk for the driver to decode alone or with other sessions' chunks of the same streamer
        (its `PCMChunk` comes back). token2wav keeps no rows: sid 0 whenever the streamer is shared."""
        return PoolStep(self._shared_streamer, 0, job, partial(_decode_alone, self.streamer, job))


def _decode_alone(streamer: StreamingToken2Wav, job: ChunkJob) -> PCMChunk:
    """A token2wav chunk alone (a chunk `PoolStep`'s `alone`)."""
    return streamer.decode([job])[0]


def _talker_step(talker: Talker, state: TalkerState, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    """A Talker decode step alone (a `PoolStep`'s `alone`): x [1, 1, C] through the session's own cache."""
    return talker.decode_input_logits(state, x), None
