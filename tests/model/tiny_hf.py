"""Tiny random Llama / Qwen2 checkpoints made with transformers (test-only) and saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_tiny_hf(tmp: Path, family: str = "llama", tied: bool = False, shard: str | None = None,
                 seed: int = 0, **overrides: Any) -> tuple[Any, Path]:
    """Build a tiny random model, re-initialise it to non-trivial weights, save it; return (model, dir)."""
    import transformers

    common = dict(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                  rope_theta=10000.0)
    common |= overrides
    if family == "llama":
        cfg = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    # The default init (std 0.02) gives near-zero logits, which would make a parity test weak.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    out = tmp / f"{family}{'-tied' if tied else ''}{'-sharded' if shard else ''}"
    model.save_pretrained(out, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return model, out
