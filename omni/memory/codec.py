"""Bytes for arrays and payloads, as stored in the database and the feature shards.

An array is a small header (dtype string, rank, shape) and its raw little-endian bytes. Not numpy's .npy: its
header is parsed with `ast.literal_eval`, about 50 us per array, which made loading 32 events for one recall cost
15 ms of the 20 ms budget.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from omni.memory.types import FramePayload, LaneKeys, Utterance

_HEAD = struct.Struct("<4sB")  # dtype.str (e.g. b"<f4"), rank


def array_to_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return _HEAD.pack(a.dtype.str.encode("ascii"), a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape) + a.tobytes()


def _array_at(b: bytes | memoryview, offset: int) -> tuple[np.ndarray, int]:
    dtype, ndim = _HEAD.unpack_from(b, offset)
    offset += _HEAD.size
    shape = struct.unpack_from(f"<{ndim}q", b, offset)
    offset += 8 * ndim
    dt = np.dtype(dtype.rstrip(b"\0").decode("ascii"))
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(b, dtype=dt, count=count, offset=offset).reshape(shape).copy()
    return arr, offset + count * dt.itemsize


def array_from_bytes(b: bytes | memoryview) -> np.ndarray:
    arr, end = _array_at(b, 0)
    if end != len(b):
        raise ValueError(f"array bytes hold {len(b)} bytes, the header describes {end}")
    return arr


def payload_to_bytes(p: FramePayload) -> bytes:
    return array_to_bytes(p.times.astype(np.float64)) + array_to_bytes(p.tokens.astype(np.float16))


def payload_from_bytes(b: bytes) -> FramePayload:
    times, end = _array_at(b, 0)
    tokens, end = _array_at(b, end)
    if end != len(b) or tokens.shape[0] != times.shape[0]:
        raise ValueError(f"payload of {len(b)} bytes is malformed: {times.shape[0]} times, {tokens.shape} tokens")
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
