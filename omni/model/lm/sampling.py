"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty; seeded per session.

Everything stays on the logits' device: the categorical draw uses the exponential-race trick
(argmax of p / E with E ~ Exp(1)), which needs no host synchronisation, unlike torch.multinomial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; >1 discourages tokens already in the context
    max_new_tokens: int = 256
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class SamplerState:
    """Per-session sampling state: the RNG and which tokens the context holds (bounded: one flag each)."""

    generator: torch.Generator
    seen: torch.Tensor  # [B, V] bool

    @classmethod
    def create(cls, vocab_size: int, batch: int = 1, seed: int | None = None,
               device: torch.device | str = "cpu") -> SamplerState:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        return cls(generator=gen, seen=torch.zeros(batch, vocab_size, dtype=torch.bool, device=device))

    def observe(self, tokens: torch.Tensor) -> None:
        """Mark tokens [B, T] as present in the context (for the repetition penalty)."""
        self.seen.scatter_(1, tokens.to(self.seen.device).view(self.seen.shape[0], -1), True)


def sample(logits: torch.Tensor, cfg: SamplingConfig, state: SamplerState) -> torch.Tensor:
    """Next tokens [B] (long) from logits [B, V]."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        # As the reference does: divide positive logits, multiply negative ones.
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(state.seen, penalised, logits)
    if cfg.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = (cum - sorted_logits.softmax(dim=-1)) >= cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=state.generator)
    return (probs / race).argmax(dim=-1)
