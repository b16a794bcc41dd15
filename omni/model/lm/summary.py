"""L2 summaries written by a text LM, in small steps a scheduler can interleave with conversation work.

`summary_steps(lm, texts)` (a text LM) or `thinker_summary_steps(thinker, texts)` (an omni checkpoint's Thinker,
text only, either family: `OmniThinker`) is a generator: each `next()` does one bounded piece of work (a prefill
chunk of `prefill_chunk` tokens or one decoded token) and the summary is its return value (`StopIteration.value`). The
caller runs each step as its own job on the device worker, so a turn waits at most one step behind it
(omni.streaming.memory_summary). The state (a fresh, small KV cache) belongs to the generator: the conversation's
sessions are not touched. Each step enters inference mode itself, since other jobs run on the same thread between
steps.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.detokenizer import IncrementalDetokenizer
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.loaders import LoadedLM
from omni.model.prompt import PromptBuilder

# Short and concrete: SmolLM2-135M follows a one-line instruction better than a long one.
SUMMARY_INSTRUCTION = (
    "Summarize the conversation below in one or two short sentences. Keep names, numbers and facts the user gave."
)


@dataclass(frozen=True)
class SummaryConfig:
    max_new_tokens: int = 64  # one or two sentences
    max_input_chars: int = 3000  # ~750 tokens of the children's texts: the newest part is kept
    prefill_chunk: int = 32  # tokens per prefill step: a few ms for a 135M model on one core


def summary_body(texts: Sequence[str], cfg: SummaryConfig) -> str:
    """The children's texts, one a line, the newest `max_input_chars` kept; ValueError when all are empty."""
    body = "\n".join(t.strip() for t in texts if t.strip())[-cfg.max_input_chars :]
    if not body:
        raise ValueError("nothing to summarize: every text is empty")
    return body


def summary_steps(
    lm: LoadedLM, texts: Sequence[str], config: SummaryConfig | None = None
) -> Generator[None, None, str]:
    """Yields after each bounded step; returns the summary of `texts` (greedy, stripped)."""
    cfg = config or SummaryConfig()
    body = summary_body(texts, cfg)
    messages = [{"role": "system", "content": SUMMARY_INSTRUCTION}, {"role": "user", "content": body}]
    ids = lm.tokenizer.encode(lm.tokenizer.render_chat(messages, add_generation_prompt=True))
    return (yield from prompt_steps(lm.model, lm.tokenizer, ids, cfg))


class _HasDecoder(Protocol):
    @property
    def lm(self) -> DecoderLM: ...


class OmniThinker(Protocol):
    """What a summary needs of a loaded omni Thinker: its text decoder, chat prompt and tokenizer (Qwen2.5-Omni's
    `LoadedThinker` and Qwen3-Omni's `LoadedQwen3` both have them)."""

    @property
    def model(self) -> _HasDecoder: ...

    @property
    def prompt(self) -> PromptBuilder: ...

    @property
    def tokenizer(self) -> TextTokenizer: ...


def thinker_summary_steps(
    thinker: OmniThinker, texts: Sequence[str], config: SummaryConfig | None = None
) -> Generator[None, None, str]:
    """`summary_steps` on an omni checkpoint's Thinker, text only: its own chat prompt (PromptBuilder), its decoder
    with plain positions (text ids are equal on the three TMRoPE axes, which is plain RoPE)."""
    cfg = config or SummaryConfig()
    p = thinker.prompt
    ids = (p.system_turn(SUMMARY_INSTRUCTION) + p.turn_start("user") + p.text(summary_body(texts, cfg))
           + p.turn_end() + p.turn_start("assistant"))
    return (yield from prompt_steps(thinker.model.lm, thinker.tokenizer, ids, cfg))


def prompt_steps(
    model: DecoderLM, tokenizer: TextTokenizer, ids: list[int], cfg: SummaryConfig
) -> Generator[None, None, str]:
    """The bounded steps of a greedy reply to the prompt `ids` in a fresh small cache; returns its text."""
    window = len(ids) + cfg.max_new_tokens
    state = model.init_state(CacheConfig(sinks=0, window=window, chunk=cfg.prefill_chunk))
    sampling = SamplingConfig(temperature=0.0, repetition_penalty=1.1, max_new_tokens=cfg.max_new_tokens,
                              stop_token_ids=frozenset(tokenizer.stop_token_ids))
    sampler = SamplerState.create(model.cfg.vocab_size, device=model.device)
    logits = torch.zeros(0)
    for i in range(0, len(ids), cfg.prefill_chunk):
        logits = _feed(model, state, sampler, ids[i : i + cfg.prefill_chunk])
        yield
    detok = IncrementalDetokenizer(tokenizer)
    for _ in range(cfg.max_new_tokens):
        token = _choose(logits, sampling, sampler)
        if token in sampling.stop_token_ids:
            break
        detok.push(token)
        logits = _feed(model, state, sampler, [token])
        yield
    return detok.text().strip()


@torch.inference_mode()
def _feed(model: DecoderLM, state: DecoderState, sampler: SamplerState, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], device=model.device)
    sampler.observe(x)
    out = model(state, input_ids=x)
    assert out.logits is not None
    return out.logits


@torch.inference_mode()
def _choose(logits: torch.Tensor, sampling: SamplingConfig, sampler: SamplerState) -> int:
    return int(sample(logits, sampling, sampler)[0])
