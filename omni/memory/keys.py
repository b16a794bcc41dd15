"""Salient key selection: a few diverse keys per event, so small or brief content keeps its own key.

One mean key per event dilutes a needle that covers 2 of 16 patches for 3 of 20 seconds to a few percent of the
mean, below every distractor's similarity: in the reference's toy simulator (memory.md section 6) one mean key found
16.7% of needles at 1 h, 8 keys picked by saliency alone 65% (they cluster on one outlier), and 8 keys picked by
saliency with diversity 100%. The selection here: rank candidate tokens by distance from the event mean (outliers
first), accept greedily while a token's cosine to every accepted key stays below `nms_cos` (0.7), and fill the
remaining slots by farthest-point sampling so an event with few outliers still spreads its keys.
"""

from __future__ import annotations

import numpy as np

from omni.memory.types import LaneKeys

_EPS = 1e-8


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, _EPS)).astype(np.float32)


def select_salient_keys(
    tokens: np.ndarray, times: np.ndarray, n_keys: int = 8, nms_cos: float = 0.7
) -> LaneKeys:
    """Pick up to `n_keys` diverse, salient unit keys among `tokens` [T, D] with their `times` [T]."""
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"select_salient_keys needs tokens of shape [T>0, D], got {tokens.shape}")
    if times.shape != (tokens.shape[0],):
        raise ValueError(f"times must have shape [{tokens.shape[0]}], got {times.shape}")
    cand = unit_rows(tokens)
    mean = unit_rows(cand.mean(axis=0, keepdims=True))[0]
    saliency = 1.0 - cand @ mean
    order = np.argsort(-saliency, kind="stable")
    chosen: list[int] = []
    best_cos = np.full(cand.shape[0], -np.inf, dtype=np.float32)  # max cosine of each candidate to the chosen
    for i in order:
        if len(chosen) == n_keys:
            break
        if best_cos[i] < nms_cos:
            chosen.append(int(i))
            best_cos = np.maximum(best_cos, cand @ cand[i])
    while len(chosen) < min(n_keys, cand.shape[0]):
        # Farthest point: the candidate least similar to everything chosen so far.
        i = int(np.argmin(np.where(np.isin(np.arange(cand.shape[0]), chosen), np.inf, best_cos)))
        chosen.append(i)
        best_cos = np.maximum(best_cos, cand @ cand[i])
    idx = np.asarray(chosen, dtype=np.int64)
    return LaneKeys(keys=cand[idx], key_times=np.asarray(times, dtype=np.float64)[idx], mean_key=mean)


def merge_lane_keys(children: list[LaneKeys], n_keys: int = 16, nms_cos: float = 0.7) -> LaneKeys:
    """Keys of an L2 summary: a diverse subset of its children's keys (same selection, on keys instead of tokens)."""
    if not children:
        raise ValueError("merge_lane_keys needs at least one child lane")
    keys = np.concatenate([c.keys for c in children], axis=0)
    times = np.concatenate([c.key_times for c in children], axis=0)
    merged = select_salient_keys(keys, times, n_keys=n_keys, nms_cos=nms_cos)
    merged.mean_key = unit_rows(np.stack([c.mean_key for c in children]).mean(axis=0, keepdims=True))[0]
    return merged
