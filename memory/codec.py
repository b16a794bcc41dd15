"""Bytes for arrays and payloads, as stored in the database and the feature shards (numpy's .npy format:
self-describing dtype and shape, no pickle)."""

from __future__ import annotations

import io
import json

import numpy as np

from memory.types import FramePayload, LaneKeys, Utterance


def array_to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(b: bytes | memoryview) -> np.ndarray:
    return np.load(io.BytesIO(bytes(b)), allow_pickle=False)


def payload_to_bytes(p: FramePayload) -> bytes:
    buf = io.BytesIO()
    np.save(buf, p.times.astype(np.float64), allow_pickle=False)
    np.save(buf, p.tokens.astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def payload_from_bytes(b: bytes) -> FramePayload:
    buf = io.BytesIO(b)
    times = np.load(buf, allow_pickle=False)
    tokens = np.load(buf, allow_pickle=False)
    return FramePayload(times=times, tokens=tokens)


def lane_to_row(lane: LaneKeys) -> tuple[bytes, bytes, bytes]:
    return (
        array_to_bytes(lane.keys.astype(np.float32)),
        array_to_bytes(lane.key_times.astype(np.float64)),
        array_to_bytes(lane.mean_key.astype(np.float32)),
    )


def lane_from_row(keys: bytes, key_times: bytes, mean_key: bytes) -> LaneKeys:
    return LaneKeys(
        keys=array_from_bytes(keys), key_times=array_from_bytes(key_times), mean_key=array_from_bytes(mean_key)
    )


def utterances_to_json(utterances: list[Utterance]) -> str:
    return json.dumps([[u.role, u.text, u.t_start, u.t_end] for u in utterances], ensure_ascii=False)


def utterances_from_json(s: str) -> list[Utterance]:
    return [Utterance(role=r, text=t, t_start=float(a), t_end=float(b)) for r, t, a, b in json.loads(s)]
