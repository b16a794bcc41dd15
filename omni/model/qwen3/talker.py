"""The Qwen3-Omni Talker: Thinker outputs -> 16-codebook codec frames (12.5 Hz, 80 ms of audio per frame).

Inputs, as the reference builds them (shared/reference/qwen_omni.md section 2.5). The Talker is decoupled from
the Thinker's last layer: it reads only the user turns and the reply's text.
* user-turn positions (every user turn of the conversation, in order; system and assistant turns are not
  given): text positions -> `text_projection(Thinker input embedding)`, audio/image/video positions ->
  `hidden_projection(Thinker hidden state after layer accept_hidden_layer)`;
* the reply prefix, 9 positions: text track [proj(<|im_start|>), proj(assistant), proj(\\n), tts_pad x 4,
  tts_bos, proj(first reply token)] plus codec track [0, 0, 0, nothink, think_bos, think_eos, speaker,
  codec_pad, codec_bos] (codec embeddings `E_0`);
* step k >= 1: the sum of the 16 codebook embeddings of frame k - 1 plus the next text slot: proj(reply token
  k) while the Thinker has one, then tts_eos once, then tts_pad forever.
Each step's last hidden state gives codebook 0 through `codec_head` (ids [vocab - 1024, vocab) other than
codec EOS suppressed; EOS ends the reply); the code predictor (a small dense decoder, "MTP") then runs a fresh
16-position pass per frame, [hidden, E_0(c_0)], E_1(c_1), ..., predicting c_1 .. c_15 with its 15 heads.
Positions: the user turns take TM-RoPE ids (`omni.model.tmrope.rope_index` over the user tokens, with the Thinker's
media token ids), the prefix and every step continue one id at a time after them.

So the Talker can start once the first reply token exists (frame 0 needs no more text) and then needs one
Thinker token per frame: `push_text` queues them, `end_text` marks the end, `can_step` says when the next
frame can be computed without changing the result. The module holds weights only; `Qwen3TalkerState`
(KV caches, samplers, queued text) is per session.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.batch import BatchedDecoder, PoolStep
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.loaders.hf import SafetensorsIndex, read_config
from omni.model.loaders.weights import build_decoder
from omni.model.qwen3.config import MODEL_TYPE, Qwen3OmniConfig, Qwen3TalkerConfig

SUPPRESSED_TOP = 1024  # the reference suppresses the top 1024 codec ids (specials) except EOS
PREFIX_LEN = 9


def talker_sampling(cfg: Qwen3TalkerConfig, seed: int | None = None, **overrides: Any) -> SamplingConfig:
    """Codebook 0 (the reference's generate defaults): T 0.9, top-k 50, top-p 1.0, repetition penalty 1.05."""
    base = SamplingConfig(temperature=0.9, top_k=50, top_p=1.0, repetition_penalty=1.05, max_new_tokens=4096,
                          stop_token_ids=frozenset({cfg.codec_eos_token_id}), seed=seed)
    return dataclasses.replace(base, **overrides)


def predictor_sampling(seed: int | None = None, **overrides: Any) -> SamplingConfig:
    """Codebooks 1..15 (the reference's code predictor when sampling): T 1.0, top-k 50, top-p 0.8."""
    return dataclasses.replace(SamplingConfig(temperature=1.0, top_k=50, top_p=0.8, seed=seed), **overrides)


GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=4096)


class ResizeMLP(nn.Module):
    """Thinker width -> Talker width: Linear + SiLU + Linear, with biases (text_projection, hidden_projection)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(d_in, d_hidden)
        self.linear_fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(nn.functional.silu(self.linear_fc1(x)))


@dataclass
class TalkerTexts:
    """Projected text-track vectors [D] of the TTS specials (rows of the Thinker's embedding table)."""

    tts_pad: torch.Tensor
    tts_bos: torch.Tensor
    tts_eos: torch.Tensor


@dataclass
class Qwen3TalkerState:
    """One session's Talker: the two KV caches, samplers, queued text slots and the reply's progress."""

    decoder: DecoderState  # its own cache, or a row of a `BatchedDecoder` pool (`pool`, `sid`)
    predictor: DecoderState  # reset for every frame
    sampler: SamplerState
    predictor_sampler: SamplerState
    sampling: SamplingConfig
    predictor_sampling: SamplingConfig
    texts: TalkerTexts
    speaker: int
    pending: deque[torch.Tensor] = field(default_factory=deque)  # projected text slots [D], oldest first
    text_ended: bool = False
    end_fed: bool = False
    logits: torch.Tensor | None = None  # raw codebook-0 logits [1, V] of the frame about to be chosen
    hidden: torch.Tensor | None = None  # the Talker's final-norm hidden [1, 1, D] at that step
    last_logits: torch.Tensor | None = None  # the raw logits of the last chosen frame (for inspection)
    last_frame: torch.Tensor | None = None  # [Q] long
    frames: int = 0  # codebook-0 choices this reply (EOS included)
    done: bool = False
    reply_start: int | None = None  # cache length when the reply began (None: no reply)
    reply_position: int = 0  # next_position when the reply began
    pool: BatchedDecoder | None = None  # the pool whose row `sid` is `decoder` (None: a cache of its own)
    sid: int | None = None
    predictor_pool: BatchedDecoder | None = None  # the pool whose row `predictor_sid` is `predictor`
    predictor_sid: int | None = None


class Qwen3Talker(nn.Module):
    """Weights: projections, the MoE decoder (embed_tokens = E_0, lm_head = codec_head) and the code predictor."""

    suppress: torch.Tensor  # [V] bool, a non-persistent buffer (`suppressed_codes`)

    def __init__(self, cfg: Qwen3TalkerConfig, decoder: DecoderLM | None = None,
                 predictor: DecoderLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dec_cfg, pred_cfg = decoder_configs(cfg)
        D, E = dec_cfg.hidden_size, cfg.thinker_hidden_size
        self.text_projection = ResizeMLP(E, dec_cfg.intermediate_size, D)
        self.hidden_projection = ResizeMLP(E, dec_cfg.intermediate_size, D)
        self.decoder = decoder if decoder is not None else DecoderLM(dec_cfg)
        # The predictor's own embed_tokens is unused (tied, a placeholder when loaded): its inputs are the
        # Talker's hidden state and the per-codebook embeddings below.
        self.predictor = predictor if predictor is not None else DecoderLM(pred_cfg)
        groups = cfg.num_code_groups - 1
        self.codec_embeddings = nn.ModuleList(nn.Embedding(pred_cfg.vocab_size, D) for _ in range(groups))
        self.heads = nn.ModuleList(nn.Linear(D, pred_cfg.vocab_size, bias=False) for _ in range(groups))
        self.register_buffer("suppress", suppressed_codes(dec_cfg.vocab_size, cfg.codec_eos_token_id),
                             persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.linear_fc1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_projection.linear_fc1.weight.device

    # ---- inputs ------------------------------------------------------------------------------------------

    def texts(self, table: torch.Tensor, tts_pad: int, tts_bos: int, tts_eos: int) -> TalkerTexts:
        """Projected TTS specials from the Thinker's input embedding table [V_text, E] and their ids."""
        rows = self.project_text(table[[tts_pad, tts_bos, tts_eos]])
        return TalkerTexts(tts_pad=rows[0], tts_bos=rows[1], tts_eos=rows[2])

    @torch.inference_mode()
    def project_text(self, embeds: torch.Tensor) -> torch.Tensor:
        """text_projection of Thinker input embeddings [..., E] -> [..., D]."""
        return self.text_projection(embeds.to(self.device, self.dtype))

    @torch.inference_mode()
    def user_slots(self, embeds: torch.Tensor, hidden: torch.Tensor, media: torch.Tensor | None) -> torch.Tensor:
        """Talker inputs [T, D] of user-turn positions: Thinker input embeddings [T, E] at text positions,
        Thinker hidden states [T, E] (after layer accept_hidden_layer) where `media` [T] bool is set."""
        out = self.project_text(embeds)
        if media is not None and bool(media.any()):
            m = media.to(out.device)
            out[m] = self.hidden_projection(hidden.to(self.device, self.dtype)[m])
        return out

    def init_state(self, texts: TalkerTexts, speaker: int, sampling: SamplingConfig | None = None,
                   predictor: SamplingConfig | None = None, seed: int | None = None,
                   cache: CacheConfig | None = None, pool: BatchedDecoder | None = None,
                   sid: int | None = None, predictor_pool: BatchedDecoder | None = None,
                   predictor_sid: int | None = None) -> Qwen3TalkerState:
        """A session; `speaker` is a codec id (`cfg.speaker(name)`); sampling defaults to the reference's.
        `pool`, `sid`: the decoder's cache is row `sid` of this `embeds=True` pool of `self.decoder`, so the
        codebook-0 steps of `step_steps` can run batched with other sessions' (omni/model/lm/batch.py);
        `predictor_pool`, `predictor_sid`: the same for the code predictor (a pool of `self.predictor` with
        `predictor_cache()`)."""
        mtp_cache = self.predictor_cache()
        if predictor_pool is not None and predictor_sid is not None:
            if predictor_pool.cache_cfg != mtp_cache:
                raise ValueError("the code predictor's pool needs Qwen3Talker.predictor_cache()")
            mtp = predictor_pool.sessions[predictor_sid].state
        else:
            predictor_pool = predictor_sid = None
            mtp = self.predictor.init_state(mtp_cache)
        if pool is not None and sid is not None:
            if cache is not None and cache != pool.cache_cfg:
                raise ValueError("the Talker's cache config differs from its pool's")
            decoder = pool.sessions[sid].state
        else:
            pool = sid = None
            decoder = self.decoder.init_state(cache)
        sampling = sampling or talker_sampling(self.cfg, seed=seed)
        if self.cfg.codec_eos_token_id not in sampling.stop_token_ids:
            sampling = dataclasses.replace(sampling, stop_token_ids=sampling.stop_token_ids |
                                           {self.cfg.codec_eos_token_id})
        return Qwen3TalkerState(
            decoder=decoder,
            predictor=mtp,
            sampler=SamplerState.create(self.decoder.cfg.vocab_size, seed=seed, device=self.device),
            predictor_sampler=SamplerState.create(self.predictor.cfg.vocab_size, seed=seed, device=self.device),
            sampling=sampling, predictor_sampling=predictor or predictor_sampling(seed=seed),
            texts=texts, speaker=speaker, pool=pool, sid=sid, predictor_pool=predictor_pool,
            predictor_sid=predictor_sid,
        )

    def predictor_cache(self) -> CacheConfig:
        """The code predictor's cache: one frame's positions (the Talker's hidden state, then a code per group)."""
        return CacheConfig(sinks=0, window=self.cfg.num_code_groups, chunk=2)

    # ---- the user track ----------------------------------------------------------------------------------

    def feed_user(self, state: Qwen3TalkerState, slots: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """Prefill user-turn slots [T, D] (`user_slots`) at positions [3, T] (None: the next text ids)."""
        if state.reply_start is not None:
            raise ValueError("feed_user during a reply: end_reply first")
        if slots.shape[0]:
            pos = None if positions is None else positions.reshape(3, 1, -1).to(self.device)
            self.decoder(state.decoder, inputs_embeds=slots[None].to(self.dtype), positions=pos, logits="none")

    # ---- one reply -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def begin_reply(self, state: Qwen3TalkerState, head: torch.Tensor, first_text: torch.Tensor) -> None:
        """Feed the 9-position prefix: `head` [3, E] = Thinker input embeddings of <|im_start|>, the assistant
        role token and "\\n"; `first_text` [E] = the embedding of the reply's first token. Frame 0 can then be
        taken with `step`."""
        if state.reply_start is not None:
            raise ValueError("begin_reply during a reply: end_reply first")
        state.reply_start, state.reply_position = state.decoder.cache.length, state.decoder.next_position
        t = state.texts
        proj = self.project_text(torch.cat([head.reshape(3, -1), first_text.reshape(1, -1)]))
        text = torch.cat([proj[:3], t.tts_pad.expand(4, -1), t.tts_bos[None], proj[3:]])
        c = self.cfg
        ids = torch.tensor([c.codec_nothink_id, c.codec_think_bos_id, c.codec_think_eos_id, state.speaker,
                            c.codec_pad_id, c.codec_bos_id], device=self.device)
        codec = torch.cat([torch.zeros(3, text.shape[1], dtype=self.dtype, device=self.device),
                           self.decoder.embed_tokens(ids).to(self.dtype)])
        self._run(state, (text + codec)[None])

    def push_text(self, state: Qwen3TalkerState, embed: torch.Tensor) -> None:
        """Queue the Thinker input embedding [E] of the next reply token (tokens 1, 2, ... of the reply)."""
        if state.text_ended:
            raise ValueError("push_text after end_text: the reply already ended")
        if len(state.pending) >= state.sampling.max_new_tokens:
            raise ValueError(f"more than {state.sampling.max_new_tokens} text slots waiting for the Talker")
        state.pending.append(self.project_text(embed.reshape(-1)))

    def end_text(self, state: Qwen3TalkerState) -> None:
        """The Thinker's reply ended: after the queued slots, tts_eos once, then tts_pad."""
        state.text_ended = True

    def can_step(self, state: Qwen3TalkerState) -> bool:
        """True when the next frame can be computed now (its text slot is known)."""
        if state.done or state.reply_start is None:
            return False
        return state.logits is not None or bool(state.pending) or state.text_ended

    @torch.inference_mode()
    def step(self, state: Qwen3TalkerState) -> torch.Tensor | None:
        """The next frame: codes [Q] (long), or None when codebook 0 is EOS. The frame that reaches the
        sampling's max_new_tokens is returned whole and ends the reply (`state.done`)."""
        gen = self.step_steps(state)
        send: Any = None
        while True:
            try:
                st = gen.send(send)
            except StopIteration as stop:
                return cast("torch.Tensor | None", stop.value)
            send = st.alone()

    def step_steps(self, state: Qwen3TalkerState) -> Generator[PoolStep, Any, torch.Tensor | None]:
        """`step`, yielding its codebook-0 decode step (one, or none right after `begin_reply`) as a `PoolStep`
        for its driver to run alone or batched with other sessions' (omni/model/lm/batch.py `run_steps`); returns the
        frame. The code predictor's pass runs per session."""
        if not self.can_step(state):
            raise ValueError("the Talker cannot step: begin_reply first, then push_text or end_text")
        if state.logits is None:
            assert state.last_frame is not None
            with torch.inference_mode():
                x = (self.frame_embedding(state.last_frame) + self._next_slot(state))[None, None].to(self.dtype)

            def alone() -> tuple[torch.Tensor, torch.Tensor | None]:
                self._run(state, x)
                assert state.logits is not None and state.hidden is not None
                return state.logits, state.hidden[:, -1]

            logits, hidden = yield PoolStep(state.pool, state.sid, x, alone)
            assert hidden is not None
            state.logits, state.hidden = logits.float().clone(), hidden[:, None]  # a batch's buffers get reused
        assert state.logits is not None and state.hidden is not None
        logits, hidden = state.logits, state.hidden
        state.logits = state.hidden = None
        state.last_logits = logits
        c0 = self.choose_first(state, logits)
        if c0 in state.sampling.stop_token_ids:
            return None
        if state.predictor_pool is None:
            frame = self.predict_residual(state, hidden, c0)
        else:
            frame = yield from self.predict_residual_steps(state, hidden, c0)
        state.last_frame = frame
        return frame

    def end_reply(self, state: Qwen3TalkerState) -> None:
        """Forget the reply (its positions leave the cache; the user track stays) and reset per-reply state."""
        if state.reply_start is not None:
            state.decoder.cache.truncate(state.reply_start)
            state.decoder.next_position = state.reply_position
        state.reply_start = None
        state.pending.clear()
        state.text_ended = state.end_fed = state.done = False
        state.logits = state.hidden = state.last_logits = state.last_frame = None
        state.frames = 0
        state.sampler.seen.zero_()

    # ---- pieces ------------------------------------------------------------------------------------------

    def _run(self, state: Qwen3TalkerState, x: torch.Tensor) -> None:
        out = self.decoder(state.decoder, inputs_embeds=x.to(self.dtype), logits="last", return_hidden=True)
        assert out.logits is not None and out.hidden is not None
        state.logits, state.hidden = out.logits.float(), out.hidden[:, -1:]

    def _next_slot(self, state: Qwen3TalkerState) -> torch.Tensor:
        if state.pending:
            return state.pending.popleft()
        if not state.text_ended:
            raise ValueError("the Talker needs the next Thinker token (push_text) or end_text before it can step")
        if not state.end_fed:
            state.end_fed = True
            return state.texts.tts_eos
        return state.texts.tts_pad

    def choose_first(self, state: Qwen3TalkerState, logits: torch.Tensor) -> int:
        """Codebook 0 from raw logits [1, V]: specials suppressed, then the session's sampling."""
        masked = logits.masked_fill(self.suppress.to(logits.device), float("-inf"))
        code = int(sample(masked, state.sampling, state.sampler)[0])
        state.sampler.observe(torch.tensor([[code]]))
        state.frames += 1
        if code in state.sampling.stop_token_ids or state.frames >= state.sampling.max_new_tokens:
            state.done = True
        return code

    @torch.inference_mode()
    def predict_residual(self, state: Qwen3TalkerState, hidden: torch.Tensor, c0: int) -> torch.Tensor:
        """The code predictor's pass for one frame: codes [Q] = c_0 and c_1 .. c_15 from hidden [1, 1, D]."""
        mtp = state.predictor
        mtp.reset()
        codes = [torch.tensor([c0], device=self.device)]
        x = torch.cat([hidden.to(self.dtype), self.decoder.embed_tokens(codes[0])[None].to(self.dtype)], dim=1)
        for g, head in enumerate(self.heads):
            out = self.predictor(mtp, inputs_embeds=x, logits="none", return_hidden=True)
            assert out.hidden is not None
            code = sample(head(out.hidden[:, -1]).float(), state.predictor_sampling, state.predictor_sampler)
            codes.append(code)
            if g + 1 < len(self.heads):
                x = self.codec_embeddings[g](code)[None].to(self.dtype)
        return torch.cat(codes)

    def predict_residual_steps(self, state: Qwen3TalkerState, hidden: torch.Tensor, c0: int
                               ) -> Generator[PoolStep, Any, torch.Tensor]:
        """`predict_residual` for a predictor cache in a pool row: the two-position prefill runs here, each later
        group's one-token step is yielded as a `PoolStep` (batched with other sessions' by its driver)."""
        mtp = state.predictor
        with torch.inference_mode():
            mtp.reset()
            codes = [torch.tensor([c0], device=self.device)]
            x = torch.cat([hidden.to(self.dtype), self.decoder.embed_tokens(codes[0])[None].to(self.dtype)], dim=1)
            out = self.predictor(mtp, inputs_embeds=x, logits="none", return_hidden=True)
            assert out.hidden is not None
            h = out.hidden[:, -1]
        for g, head in enumerate(self.heads):
            if g:
                with torch.inference_mode():
                    x = self.codec_embeddings[g - 1](codes[-1])[None].to(self.dtype)
                _, h = yield PoolStep(state.predictor_pool, state.predictor_sid, x, partial(self._predict, mtp, x))
                assert h is not None
            with torch.inference_mode():
                codes.append(sample(head(h).float(), state.predictor_sampling, state.predictor_sampler))
        return torch.cat(codes)

    def _predict(self, mtp: DecoderState, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One code predictor step alone (a `PoolStep`'s `alone`): its hidden state; no logits (the heads are per
        group)."""
        out = self.predictor(mtp, inputs_embeds=x, logits="none", return_hidden=True)
        assert out.hidden is not None
        h = out.hidden[:, -1]
        return h.new_zeros(1, 0), h

    @torch.inference_mode()
    def frame_embedding(self, frame: torch.Tensor) -> torch.Tensor:
        """Sum of the 16 codebook embeddings of a frame [Q] -> [D] (E_0 is the decoder's codec embedding)."""
        x = self.decoder.embed_tokens(frame[:1])[0].to(self.dtype)
        for g, emb in enumerate(self.codec_embeddings):
            x = x + emb(frame[g + 1 : g + 2])[0].to(self.dtype)
        return x


def user_turn_mask(ids: torch.Tensor, im_start: int, user: int) -> torch.Tensor:
    """[L] bool: the positions of user turns in a ChatML token sequence [L], each turn from its <|im_start|>
    up to the next <|im_start|> (its <|im_end|> and newline included), as the reference selects them."""
    ids = ids.reshape(-1)
    starts = torch.nonzero(ids == im_start).flatten().tolist()
    mask = torch.zeros(ids.shape[0], dtype=torch.bool)
    for a, b in zip(starts, [*starts[1:], ids.shape[0]], strict=True):
        if a + 1 < ids.shape[0] and int(ids[a + 1]) == user:
            mask[a:b] = True
    return mask


def suppressed_codes(vocab: int, eos: int) -> torch.Tensor:
    """[V] bool: the codec ids codebook 0 never takes (the top 1024 specials, EOS excepted)."""
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[max(0, vocab - SUPPRESSED_TOP):] = True
    mask[eos] = False
    return mask


def decoder_configs(cfg: Qwen3TalkerConfig) -> tuple[DecoderConfig, DecoderConfig]:
    """Our DecoderConfigs of the Talker's MoE decoder and its code predictor (tied: no head of its own)."""
    dec = DecoderConfig.from_hf_config({"model_type": "qwen3_omni_moe_talker_text"} | cfg.text_config)
    pred = DecoderConfig.from_hf_config(
        {"model_type": "qwen3_omni_moe_talker_code_predictor"} | cfg.code_predictor_config)
    if pred.hidden_size != dec.hidden_size:
        raise ConfigError(f"code predictor hidden size {pred.hidden_size} != talker hidden size {dec.hidden_size}: "
                          "the predictor reads the Talker's hidden state")
    return dataclasses.replace(dec, tie_word_embeddings=False), dataclasses.replace(pred, tie_word_embeddings=True)


Getter = Any  # Callable[[str], torch.Tensor | None]


def build_qwen3_talker(cfg: Qwen3TalkerConfig, get: Getter, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", prefix: str = "talker.") -> Qwen3Talker:
    """The Talker from checkpoint tensors in the released layout (shared/reference/qwen_omni.md 2.8):
    `talker.model.*` (codec_embedding = E_0), `talker.codec_head`, `talker.{text,hidden}_projection.*`,
    `talker.code_predictor.model.*` with `codec_embedding.{0-14}` and `talker.code_predictor.lm_head.{0-14}`."""
    dec_cfg, pred_cfg = decoder_configs(cfg)
    dec_keys = {"embed_tokens.weight": prefix + "model.codec_embedding.weight",
                "lm_head.weight": prefix + "codec_head.weight"}
    decoder = build_decoder(dec_cfg, lambda n: get(dec_keys.get(n, prefix + "model." + n)), dtype, device,
                            f"{prefix}model")
    placeholder = torch.zeros(1, pred_cfg.hidden_size, dtype=dtype, device=device).expand(pred_cfg.vocab_size, -1)
    mtp = prefix + "code_predictor."
    predictor = build_decoder(pred_cfg, lambda n: placeholder if n == "embed_tokens.weight" else
                              get(mtp + "model." + n), dtype, device, f"{mtp}model")
    with torch.device("meta"):
        talker = Qwen3Talker(cfg, decoder=decoder, predictor=predictor)
    own: dict[str, torch.Tensor] = {}
    for name, param in talker.named_parameters():
        if name.startswith(("decoder.", "predictor.")):
            continue
        key = _checkpoint_key(name, prefix)
        t = get(key)
        if t is None:
            raise CheckpointError(f"talker tensor {key!r} is missing")
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f"talker tensor {key!r} has shape {list(t.shape)}, expected {list(param.shape)} "
                                  "from talker_config: does config.json match the weights?")
        own[name] = t.to(device=device, dtype=dtype)
    talker.load_state_dict(own, strict=False, assign=True)
    talker.register_buffer("suppress", suppressed_codes(dec_cfg.vocab_size, cfg.codec_eos_token_id).to(device),
                           persistent=False)
    return talker.eval()


def _checkpoint_key(name: str, prefix: str) -> str:
    """Our parameter name -> the released key (projections keep theirs; codebook tables and heads move)."""
    if name.startswith("codec_embeddings."):
        return prefix + "code_predictor.model.codec_embedding." + name.split(".", 1)[1]
    if name.startswith("heads."):
        return prefix + "code_predictor.lm_head." + name.split(".", 1)[1]
    return prefix + name


def read_speech_config(directory: str | os.PathLike[str]) -> tuple[Path, Qwen3OmniConfig]:
    """A Qwen3-Omni checkpoint's config, checked to have speech output (talker + code2wav sections)."""
    d = Path(directory)
    raw = read_config(d)
    if raw.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{d}/config.json: model_type {raw.get('model_type')!r} is not {MODEL_TYPE!r} "
                              "(not a Qwen3-Omni checkpoint)")
    try:
        cfg = Qwen3OmniConfig.from_hf_config(raw)
    except ConfigError as e:
        raise CheckpointError(f"{d}/config.json: {e}") from None
    if cfg.talker is None:
        raise CheckpointError(f"{d}: a thinker-only Qwen3-Omni checkpoint (no talker_config, as the -Thinking and "
                              "-Captioner releases): it has no speech output; speech needs the -Instruct checkpoint")
    if not cfg.enable_audio_output:
        raise CheckpointError(f"{d}/config.json: enable_audio_output is false (this checkpoint has no speech output)")
    return d, cfg


def load_qwen3_talker(directory: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", index: SafetensorsIndex | None = None) -> Qwen3Talker:
    """The Talker of a Qwen3-Omni checkpoint directory (config.json + sharded safetensors)."""
    d, cfg = read_speech_config(directory)
    assert cfg.talker is not None
    index = index or SafetensorsIndex(d)
    if index.get("talker.codec_head.weight") is None:
        raise CheckpointError(f"{d}: config.json has a talker_config but the weights hold no talker.* tensors")
    return build_qwen3_talker(cfg.talker, index.get, dtype, device)
