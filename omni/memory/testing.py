"""Model-free stand-ins for tests and benchmarks (no model, no download)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np


class HashingEmbedder:
    """Bag-of-words text embedding: each lower-cased word maps to a fixed random unit vector (seeded by its hash),
    a text to the unit sum of its words. Cosine then measures word overlap: enough to test ranking, not semantics."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, w: str) -> np.ndarray:
        v = self._cache.get(w)
        if v is None:
            seed = int.from_bytes(hashlib.sha256(w.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            v /= np.linalg.norm(v)
            self._cache[w] = v
        return v

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for w in re.findall(r"\w+", text.lower()):
                out[i] += self._word(w)
            n = float(np.linalg.norm(out[i]))
            if n > 0:
                out[i] /= n
        return out
