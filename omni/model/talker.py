"""The Talker: a decoder LM that turns the Thinker's per-token states into codec codes (50 Hz speech tokens).

Inputs, as the reference builds them (shared/reference/qwen_omni.md section 1.5). Every Talker input is a
vector in Thinker width E (3584 for 7B) that `thinker_to_talker_proj` maps to the Talker width (896):
* prompt position p < P: Thinker last-layer hidden (after the final norm) + Thinker input embedding, the
  embedding zeroed at audio/image/video positions (`thinker_slot`);
* P: embedding of the voice's speaker-start token + codec embedding of `codec_pad`;
* P + 1: the slot of the first generated text token + codec embedding of `codec_start`;
* decode step k: codec embedding of the previous code + one text slot: the slot of generated text token
  k + 2 while the Thinker has one, then the embedding of `tts_text_end` once, then `tts_text_pad` forever.
So the Talker starts as soon as the first text token exists and then needs one Thinker token per code; the
session feeds Thinker slots with `push_text` and marks the end with `end_text`, and `can_step` says when
the next code can be computed without changing the result.

The module holds weights only; `TalkerState` (KV cache, sampler RNG, pending text slots) is per session.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample

# Our field -> its key in `talker_config`.
_HF_TOKEN_NAMES = {
    "codec_start": "tts_codec_start_token_id",
    "codec_end": "tts_codec_end_token_id",
    "codec_pad": "tts_codec_pad_token_id",
    "codec_mask": "tts_codec_mask_token_id",
    "text_start": "tts_text_start_token_id",
    "text_end": "tts_text_end_token_id",
    "text_pad": "tts_text_pad_token_id",
}


@dataclass
class TalkerConfig:
    decoder: DecoderConfig
    embedding_size: int  # Thinker hidden width E: codec embeddings and Thinker slots live in it
    codec_start: int = 8293
    codec_end: int = 8294
    codec_pad: int = 8292
    codec_mask: int = 8296
    text_start: int = 151860  # Thinker-vocabulary ids of the text-side specials
    text_end: int = 151861
    text_pad: int = 151859

    def __post_init__(self) -> None:
        v = self.decoder.vocab_size
        for name in ("codec_start", "codec_end", "codec_pad", "codec_mask"):
            if not 0 <= getattr(self, name) < v:
                raise ConfigError(f"talker {name} id {getattr(self, name)} outside the codec vocabulary [0, {v})")

    @property
    def stop_codes(self) -> frozenset[int]:
        """Codes that end the speech track (the reference stops on codec_pad or codec_end)."""
        return frozenset({self.codec_pad, self.codec_end})

    def sampling(self, seed: int | None = None, **overrides: Any) -> SamplingConfig:
        """The checkpoint's sampling defaults: T 0.9, top-k 40, top-p 0.8, repetition penalty 1.05."""
        base = SamplingConfig(
            temperature=0.9,
            top_k=40,
            top_p=0.8,
            repetition_penalty=1.05,
            max_new_tokens=4096,
            stop_token_ids=self.stop_codes,
            seed=seed,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> TalkerConfig:
        """Read `talker_config` (or a whole Qwen2.5-Omni config.json holding it)."""
        cfg = dict(cfg.get("talker_config", cfg))
        try:
            decoder = DecoderConfig.from_hf_config({**cfg, "model_type": "qwen2", "architectures": []})
            ids = hf_fields(cls, cfg, _HF_TOKEN_NAMES, "talker_config")
            return cls(
                decoder=dataclasses.replace(decoder, tie_word_embeddings=False),
                embedding_size=int(cfg["embedding_size"]),
                **ids,
            )
        except KeyError as e:
            raise ConfigError(f"talker_config is missing {e}") from None

    def to_hf_config(self) -> dict[str, Any]:
        out = self.decoder.to_hf_config()
        for k in ("architectures", "model_type", "tie_word_embeddings"):
            out.pop(k, None)
        return out | {"embedding_size": self.embedding_size} | {
            key: getattr(self, name) for name, key in _HF_TOKEN_NAMES.items()
        }

    @classmethod
    def from_name(cls, name: str) -> TalkerConfig:
        """Presets of the released Talkers (random-weight benchmarks): qwen2.5-omni-7b, qwen2.5-omni-3b."""
        widths = {"qwen2.5-omni-7b": 3584, "qwen2.5-omni-3b": 2048}
        if name not in widths:
            raise ConfigError(f"unknown talker preset {name!r}; known: {', '.join(sorted(widths))}")
        # The 3B Talker's decoder shape is taken to equal the 7B one (section 1.8 marks it unverified).
        return cls(decoder=DecoderConfig.from_name("qwen2.5-omni-7b-talker"), embedding_size=widths[name])


@dataclass
class TalkerTextEmbeds:
    """Rows of the Thinker's embedding table the Talker needs, each [E]."""

    speaker_start: torch.Tensor  # the voice's bos_token
    text_end: torch.Tensor
    text_pad: torch.Tensor

    @classmethod
    def from_table(cls, table: torch.Tensor, cfg: TalkerConfig, speaker_bos: int) -> TalkerTextEmbeds:
        """table: the Thinker's input embedding weight [V_text, E]."""
        return cls(speaker_start=table[speaker_bos], text_end=table[cfg.text_end], text_pad=table[cfg.text_pad])


def thinker_slot(hidden: torch.Tensor, embeds: torch.Tensor, media_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Talker input slots [B, T, E]: Thinker final-norm hidden + input embedding, media positions' embedding zeroed.

    media_mask [B, T] bool marks audio/image/video placeholder positions (their encoder features are not
    passed on, only the hidden state the Thinker computed there).
    """
    if media_mask is not None:
        embeds = embeds.masked_fill(media_mask[..., None], 0.0)
    return hidden + embeds


@dataclass
class TalkerState:
    """One session's Talker: KV cache, sampler, Thinker slots not yet consumed, progress flags."""

    decoder: DecoderState
    sampler: SamplerState
    sampling: SamplingConfig
    texts: TalkerTextEmbeds
    pending: deque[torch.Tensor] = field(default_factory=deque)  # Thinker slots [1, E], oldest first
    text_ended: bool = False  # the Thinker has finished its reply
    end_fed: bool = False  # the tts_text_end slot has been consumed
    last_code: int | None = None
    steps: int = 0  # codes sampled so far (including a final stop code)
    done: bool = False
    reply_start: int | None = None  # cache length when the current reply began (None: no reply)


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig, decoder: DecoderLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.thinker_to_talker_proj = nn.Linear(cfg.embedding_size, cfg.decoder.hidden_size)
        self.codec_embed = nn.Embedding(cfg.decoder.vocab_size, cfg.embedding_size)
        # The decoder's own embed_tokens is never used: codec embeddings are in Thinker width and are
        # projected together with the Thinker slots. Its lm_head is the codec head.
        self.decoder = decoder if decoder is not None else DecoderLM(cfg.decoder)

    @property
    def dtype(self) -> torch.dtype:
        return self.thinker_to_talker_proj.weight.dtype

    def init_state(
        self,
        texts: TalkerTextEmbeds,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        cache: CacheConfig | None = None,
        decoder: DecoderState | None = None,
    ) -> TalkerState:
        """`decoder`: the session's decoder state when its cache lives elsewhere (a row of a `BatchedDecoder`
        pool over `self.decoder`); None: a cache of its own with config `cache`."""
        sampling = sampling or self.cfg.sampling(seed=seed)
        dev = self.thinker_to_talker_proj.weight.device
        seed = seed if seed is not None else sampling.seed
        return TalkerState(
            decoder=decoder if decoder is not None else self.decoder.init_state(cache),
            sampler=SamplerState.create(self.cfg.decoder.vocab_size, seed=seed, device=dev),
            sampling=sampling,
            texts=texts,
        )

    def _logits(self, state: TalkerState, embeds: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        x = self.thinker_to_talker_proj(embeds.to(self.dtype))
        out = self.decoder(state.decoder, inputs_embeds=x, positions=positions, logits="last")
        assert out.logits is not None
        return out.logits.float()

    @torch.inference_mode()
    def feed_prompt(self, state: TalkerState, slots: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """Prefill prompt slots [1, T, E] (`thinker_slot`s) at positions [3, 1, T] (the Thinker's TMRoPE ids).

        Prompt positions carry no codec embedding. A session can feed them as the Thinker prefills, turn after
        turn, so that only the two reply-start positions are left when the reply begins.
        """
        if state.reply_start is not None:
            raise ValueError("feed_prompt during a reply: end_reply first")
        if slots.shape[1]:
            x = self.thinker_to_talker_proj(slots.to(self.dtype))
            self.decoder(state.decoder, inputs_embeds=x, positions=positions, logits="none")

    @torch.inference_mode()
    def begin_reply(
        self, state: TalkerState, first_text: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Start the speech track after the prompt: raw logits [1, V] of the first code.

        Feeds [speaker start + codec pad, slot of the first text token + codec start] at positions [3, 1, 2]
        (the reference: max prompt position + 1, + 2) or, when None, the next text positions.
        """
        if state.reply_start is not None:
            raise ValueError("begin_reply during a reply: end_reply first")
        state.reply_start = state.decoder.cache.length
        dev, dt = first_text.device, first_text.dtype
        ids = torch.tensor([self.cfg.codec_pad, self.cfg.codec_start], device=self.codec_embed.weight.device)
        tail = torch.stack([state.texts.speaker_start.to(dev, dt), first_text.reshape(-1)])
        tail = tail + self.codec_embed(ids).to(dev, dt)
        # The reference's speech track for the prompt is [mask] * P + [pad, start]: those ids count as
        # "already present" for the repetition penalty.
        state.sampler.observe(torch.tensor([[self.cfg.codec_mask, self.cfg.codec_pad, self.cfg.codec_start]]))
        return self._logits(state, tail[None], positions)

    def prefill(
        self, state: TalkerState, prompt: torch.Tensor, first_text: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-shot: the prompt [1, P, E] and the reply start; positions [3, 1, P + 2] or None (0 .. P + 1)."""
        P = prompt.shape[1]
        self.feed_prompt(state, prompt, None if positions is None else positions[..., :P])
        return self.begin_reply(state, first_text, None if positions is None else positions[..., P:])

    def end_reply(self, state: TalkerState) -> None:
        """Forget the reply's positions (speech track) so the cache holds the prompt track only again, and
        reset the per-reply state; the Thinker's reply tokens then enter as prompt slots (`feed_prompt`)."""
        if state.reply_start is not None:
            state.decoder.cache.truncate(state.reply_start)
        state.reply_start = None
        state.pending.clear()
        state.text_ended = state.end_fed = state.done = False
        state.last_code = None
        state.steps = 0
        state.sampler.seen.zero_()

    def push_text(self, state: TalkerState, slot: torch.Tensor) -> None:
        """Queue the slot [1, E] (or [E]) of the next generated text token (tokens 2, 3, ... of the reply)."""
        if state.text_ended:
            raise ValueError("push_text after end_text: the reply already ended")
        if len(state.pending) >= state.sampling.max_new_tokens:
            raise ValueError(f"more than {state.sampling.max_new_tokens} text slots waiting for the Talker")
        state.pending.append(slot.reshape(1, -1))

    def end_text(self, state: TalkerState) -> None:
        """The Thinker finished its reply: after the queued slots, feed tts_text_end once, then tts_text_pad."""
        state.text_ended = True

    def can_step(self, state: TalkerState) -> bool:
        """True when the next code's text slot is known (a queued slot, or the reply has ended)."""
        return not state.done and state.last_code is not None and (bool(state.pending) or state.text_ended)

    def _next_slot(self, state: TalkerState) -> torch.Tensor:
        if state.pending:
            return state.pending.popleft()
        if not state.text_ended:
            raise ValueError("the Talker needs the next Thinker token (push_text) or end_text before it can step")
        if not state.end_fed:
            state.end_fed = True
            return state.texts.text_end.reshape(1, -1)
        return state.texts.text_pad.reshape(1, -1)

    @torch.inference_mode()
    def decode_input(self, state: TalkerState) -> torch.Tensor:
        """The decoder input [1, 1, C] of the next step: the last code and the next text slot (consumed)."""
        if state.last_code is None:
            raise ValueError("decode before the first code: call prefill and choose first")
        slot = self._next_slot(state)
        code = torch.tensor([state.last_code], device=self.codec_embed.weight.device)
        x = (self.codec_embed(code).to(slot.device, slot.dtype) + slot)[None]
        return self.thinker_to_talker_proj(x.to(self.dtype))

    @torch.inference_mode()
    def decode_logits(self, state: TalkerState) -> torch.Tensor:
        """Feed the last code and the next text slot; raw logits [1, V] of the next code."""
        return self.decode_input_logits(state, self.decode_input(state))

    @torch.inference_mode()
    def decode_input_logits(self, state: TalkerState, x: torch.Tensor) -> torch.Tensor:
        """Feed a `decode_input` x [1, 1, C] through the session's own cache; raw logits [1, V]."""
        out = self.decoder(state.decoder, inputs_embeds=x, logits="last")
        assert out.logits is not None
        return out.logits.float()

    def choose(self, state: TalkerState, logits: torch.Tensor) -> int:
        """Sample the next code from raw logits (codec_start suppressed, as the reference does)."""
        logits = logits.clone()
        logits[:, self.cfg.codec_start] = float("-inf")
        code = int(sample(logits, state.sampling, state.sampler)[0])
        state.sampler.observe(torch.tensor([[code]]))
        state.last_code = code
        state.steps += 1
        if code in state.sampling.stop_token_ids or state.steps >= state.sampling.max_new_tokens:
            state.done = True
        return code

    def start(
        self, state: TalkerState, prompt: torch.Tensor, first_text: torch.Tensor, positions: torch.Tensor | None = None
    ) -> int:
        """One-shot prefill and the first code."""
        return self.choose(state, self.prefill(state, prompt, first_text, positions))

    def step(self, state: TalkerState) -> int:
        """One codec step: the next code (a stop code sets state.done)."""
        return self.choose(state, self.decode_logits(state))
