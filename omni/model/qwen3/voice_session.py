"""A Qwen3-Omni conversation that speaks: `Qwen3ThinkerSession` + `Qwen3SpeakingSession` (omni/model/qwen3/speech.py).

The Thinker session taps every fed piece (input embeddings, hidden states entering the Talker's
`accept_hidden_layer`); this session keeps each piece with its token ids (media positions carry their pad id)
and TM-RoPE positions. When a user turn closes (`end_user_turn`), the user turns among the pieces since the last
reply (<|im_start|>user ... up to the next <|im_start|>; system and assistant turns are not given to the Talker)
go to the Talker's user track, at the Thinker's own positions shifted to start where the Talker's track stands
(TM-RoPE ids inside a turn are relative, so this equals `rope_index` over the turn). A piece that a rollback
dropped (an audio window re-fed after a louder part, `rollback`) is dropped by where it started in the cache.

`respond` (`respond_steps` run alone; the engine's batcher runs the decode steps of several sessions as one forward
when their caches are rows of one pool, and their due Code2Wav chunks as one call when they share a streamer) drives
the Talker with each reply token as the Thinker makes it and yields the PCM of the frames that can run
(`Qwen3SpeakingSession.pump`), then the rest once the text ends; a reply cut short (the caller closing the iterator:
barge-in) stops the Talker, whose reply positions leave its cache; the user track is unchanged, so the conversation
after a barge-in needs only the Thinker's rollback.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from omni.model.conversation import PromptPart, ReplyRecord, SlotPiece, TokenText
from omni.model.lm.batch import PoolStep, run_alone
from omni.model.lm.decoder import LayerAdds
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import PromptBuilder
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.qwen3.speech import Qwen3SpeakingSession, Qwen3SpeechModels, Qwen3SpeechSettings
from omni.model.qwen3.thinker import Qwen3Thinker
from omni.model.speech_session import SessionRows
from omni.model.token2wav.streaming import PCMChunk


@dataclass
class _Piece:
    start: int  # cache length before the piece
    ids: torch.Tensor  # [n] token ids; media positions hold their pad id
    positions: torch.Tensor  # [3, n]
    embeds: torch.Tensor  # [n, E]
    hidden: torch.Tensor  # [n, E]


class Qwen3VoiceSession(Qwen3ThinkerSession):
    """A `Qwen3ThinkerSession` whose replies are also spoken (24 kHz PCMChunk events from `respond`)."""

    def __init__(
        self,
        thinker: Qwen3Thinker,
        prompt: PromptBuilder,
        tokenizer: TextTokenizer,
        speech: Qwen3SpeechModels,
        settings: Qwen3SpeechSettings | None = None,
        system_prompt: str | None = None,
        cache: CacheConfig | None = None,
        talker_cache: CacheConfig | None = None,
        rows: SessionRows | None = None,
    ) -> None:
        """`rows`: the session's rows in pools of the Thinker's decoder, the Talker's and its code predictor's
        (`embeds=True`) as their caches, and a shared Code2Wav streamer (`rows.code2wav`), so the reply's decode
        steps and speech chunks can run batched with other sessions' (`respond_steps`)."""
        rows = rows or SessionRows()
        self._pieces: list[_Piece] = []
        self._ids: list[int] | None = None  # the ids of the text piece being fed
        self._kind: str | None = None  # the kind of the encoder output being fed ("audio", "video")
        self.speech = Qwen3SpeakingSession(speech, thinker.lm.embed_tokens.weight, settings, talker_cache,
                                           rows.talker, rows.talker_sid, rows.predictor, rows.predictor_sid,
                                           rows.code2wav)
        tk = speech.talker_config
        self._media_ids = {"audio": tk.audio_token_id, "image": tk.image_token_id, "video": tk.video_token_id}
        self._user = prompt.turn_start("user")
        self._im_start = self._user[0]
        super().__init__(thinker, prompt, system_prompt, cache, tokenizer,
                         tap_layer=speech.talker_config.accept_hidden_layer, pool=rows.thinker, sid=rows.thinker_sid)

    # ---- recording what is fed -----------------------------------------------------------------------------

    def feed_ids(self, ids: Sequence[int]) -> None:
        self._ids = list(ids)
        try:
            super().feed_ids(ids)
        finally:
            self._ids = None

    def _feed_encoded(
        self, kind: Literal["audio", "video"], x: torch.Tensor, positions: torch.Tensor,
        grid_hw: tuple[int, int] = (0, 0), adds: LayerAdds | None = None,
    ) -> None:
        self._kind = kind
        try:
            super()._feed_encoded(kind, x, positions, grid_hw, adds)
        finally:
            self._kind = None

    def _feed_parts(self, parts: Sequence[PromptPart]) -> None:
        """One forward for several parts (the recalled slot): their ids recorded per position, media as the
        Talker's pad ids, so the Talker still tells the slot's system turn from the user turns."""
        self._ids = [i for p in parts for i in (p.ids if p.ids is not None else [self._media_ids[p.kind]] * len(p.x))]
        try:
            super()._feed_parts(parts)
        finally:
            self._ids = None

    def _feed(self, x: torch.Tensor, positions: torch.Tensor, adds: LayerAdds | None = None) -> None:
        start = self.state.cache.length
        super()._feed(x, positions, adds)
        for (embeds, hidden) in self.take_taps():
            if self._ids is not None:
                ids = torch.tensor(self._ids)
            else:  # an audio window, a video patch or an image (the Talker tells only media from text)
                ids = torch.full((embeds.shape[0],), self._media_ids[self._kind or "image"])
            self._pieces = [p for p in self._pieces if p.start < start]  # what a rollback dropped
            self._pieces.append(_Piece(start, ids, positions.reshape(3, -1).cpu(), embeds, hidden))

    # ---- turns -----------------------------------------------------------------------------------------------

    def end_user_turn(self, recalled: Sequence[SlotPiece] = ()) -> torch.Tensor:
        """Close the user turn (Thinker) and give the user turns since the last reply to the Talker (a recalled
        memory slot is a system turn: the Thinker's alone)."""
        logits = super().end_user_turn(recalled)
        pieces = [p for p in self._pieces if p.start < self.state.cache.length]
        self._pieces = []
        if pieces:
            ids = torch.cat([p.ids for p in pieces])
            pos = torch.cat([p.positions for p in pieces], dim=1)
            embeds = torch.cat([p.embeds for p in pieces])
            hidden = torch.cat([p.hidden for p in pieces])
            head = len(self.prompt.turn_start("assistant"))
            ids, pos, embeds, hidden = ids[:-head], pos[:, :-head], embeds[:-head], hidden[:-head]
            for a, b in self._user_turns(ids):
                self._feed_talker(ids[a:b], pos[:, a:b], embeds[a:b], hidden[a:b])
        return logits

    def _user_turns(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """[start, end) of each user turn in `ids`: from <|im_start|>user to the next <|im_start|> (or the end)."""
        starts = (ids == self._im_start).nonzero().flatten().tolist() + [len(ids)]
        n = len(self._user)
        return [(a, b) for a, b in zip(starts, starts[1:], strict=False)
                if ids[a : a + n].tolist() == self._user]

    def _feed_talker(self, ids: torch.Tensor, pos: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor) -> None:
        talker, st = self.speech.models.talker, self.speech.state
        media = torch.isin(ids, torch.tensor(list(self._media_ids.values())))
        pos = pos - pos[:, :1] + st.decoder.next_position
        talker.feed_user(st, talker.user_slots(embeds, hidden, media), pos)

    # ---- a spoken reply --------------------------------------------------------------------------------------

    def respond(  # type: ignore[override]  # its events include PCMChunk
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | PCMChunk | ReplyRecord, None, None]:
        """TokenText as the reply's text completes, PCMChunk as its speech does, then a ReplyRecord (codes: one
        per Talker frame, its codebook-0 code)."""
        return run_alone(self.respond_steps(sampling, stop_ids))

    def respond_steps(  # type: ignore[override]  # its events include PCMChunk
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | PCMChunk | ReplyRecord | PoolStep, Any, None]:
        """`respond`, yielding every Thinker, Talker (codebook 0) and code predictor decode step and every Code2Wav
        chunk as a `PoolStep` for its driver to run (alone or batched with other sessions', omni/model/lm/batch.py
        `run_steps`)."""
        dev = self.thinker.device
        embed = self.thinker.lm.embed_tokens
        head = embed(torch.tensor(self.prompt.turn_start("assistant"), device=dev))
        tokens: list[int] = []
        sp = self.speech

        def talk(tokens: list[int]) -> Generator[PCMChunk | PoolStep, Any, None]:
            e = embed(torch.tensor(tokens[-1:], device=dev))[0]
            if len(tokens) == 1:
                sp.begin_reply(head, e)
            else:
                sp.push_text(e)
            yield from sp.pump_steps()

        try:
            text = yield from self._decode_reply(sampling, stop_ids, tokens, talk)  # closing it feeds the turn end
            if sp.replying:
                sp.end_text()
                yield from sp.pump_steps()
            codes = [int(f.reshape(-1)[0]) for f in sp.frames]
            samples = sp.models.code2wav.cfg.samples_for(len(sp.frames))  # streamed == whole decode
        finally:
            self._pieces = []  # the reply's own tokens are not the Talker's input
            if sp.replying:
                sp.stop()
        yield ReplyRecord(text, tokens, codes, samples, time.monotonic())
