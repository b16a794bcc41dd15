"""The RAM index of one user's events, summaries and notes: unit key matrices scored by one matrix product each.

Float32, not float16: numpy and torch have no fast float16 product on most CPUs (measured on the 2-core dev box:
4,860 keys x 256 dims took 8-9 ms in float16 against 0.06 ms in float32), and recall has 20 ms in all. At 8 keys of
256 dims per event and about 170 events per hour that is 1.6 MB/h for one lane plus 0.3 MB/h of text keys.
The number of events held in RAM is capped (`max_events`); the oldest are dropped from RAM in chunks and stay
reachable on disk through their L2 summary (whose keys stay in RAM), see `omni.memory.recall`.
"""

from __future__ import annotations

import numpy as np

from omni.memory.types import LaneKeys


class _Grow:
    """An array that grows along axis 0 by 1/8 when full: amortised O(1) append, at most 12.5% unused capacity
    (doubling would waste up to half of the RAM budget)."""

    def __init__(self, shape: tuple[int, ...], dtype: type) -> None:
        self.data: np.ndarray = np.zeros((16, *shape), dtype=dtype)
        self.n = 0

    def append(self, row: np.ndarray | float | int) -> None:
        if self.n == self.data.shape[0]:
            bigger = np.zeros((self.n + max(16, self.n // 8), *self.data.shape[1:]), dtype=self.data.dtype)
            bigger[: self.n] = self.data[: self.n]
            self.data = bigger
        self.data[self.n] = row
        self.n += 1

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]

    def keep(self, mask: np.ndarray) -> None:
        kept = self.view[mask]
        self.data = np.zeros((len(kept) + max(16, len(kept) // 8), *self.data.shape[1:]), dtype=self.data.dtype)
        self.data[: len(kept)] = kept
        self.n = len(kept)


class _Lane:
    """Keys of one lane: [R, D] per item that has the lane (padded by repeating its last key: max unchanged).
    R is the most keys any item of the lane has brought (8 for video, 4 for audio by default)."""

    def __init__(self, n_keys: int, dim: int) -> None:
        self.n_keys = n_keys
        self.dim = dim
        self.keys = _Grow((n_keys, dim), np.float32)
        self.times = _Grow((n_keys,), np.float64)
        self.pos = _Grow((), np.int64)  # item position of each row

    def add(self, pos: int, lane: LaneKeys) -> None:
        r = lane.keys.shape[0]
        if lane.keys.shape[1] != self.dim:
            raise ValueError(f"lane keys have dimension {lane.keys.shape[1]}, the index holds {self.dim}")
        if r > self.n_keys:
            self._widen(r)
        take = np.minimum(np.arange(self.n_keys), r - 1)
        self.keys.append(lane.keys[take])
        self.times.append(lane.key_times[take])
        self.pos.append(pos)

    def _widen(self, r: int) -> None:
        """Re-pad every held item to `r` keys (once, when a lane's first items had fewer tokens than keys)."""
        take = np.minimum(np.arange(r), self.n_keys - 1)
        keys, times = self.keys.view[:, take], self.times.view[:, take]
        self.n_keys = r
        self.keys, self.times = _Grow((r, self.dim), np.float32), _Grow((r,), np.float64)
        for k, t in zip(keys, times, strict=True):
            self.keys.append(k)
            self.times.append(t)


class ItemIndex:
    """Events or summaries or notes: ids, spans, text keys and lane keys, positions in insertion (= id) order."""

    def __init__(self) -> None:
        self.ids = _Grow((), np.int64)
        self.t_start = _Grow((), np.float64)
        self.t_end = _Grow((), np.float64)
        self.parent = _Grow((), np.int64)
        self.text: _Grow | None = None
        self.has_text = _Grow((), np.bool_)
        self.lanes: dict[str, _Lane] = {}

    def __len__(self) -> int:
        return self.ids.n

    def add(
        self, item_id: int, t_start: float, t_end: float, text_key: np.ndarray | None,
        lanes: dict[str, LaneKeys] | None = None, parent: int = 0,
    ) -> int:
        pos = self.ids.n
        if self.text is None and text_key is not None:
            self.text = _Grow((text_key.shape[0],), np.float32)
            for _ in range(pos):
                self.text.append(0.0)
        if self.text is not None:
            self.text.append(0.0 if text_key is None else text_key)
        self.has_text.append(text_key is not None)
        self.ids.append(item_id)
        self.t_start.append(t_start)
        self.t_end.append(t_end)
        self.parent.append(parent)
        self.add_lanes(item_id, lanes or {})
        return pos

    def add_lanes(self, item_id: int, lanes: dict[str, LaneKeys]) -> None:
        """Lane keys for an item already held (its lanes must not be held yet)."""
        pos = self.position(item_id)
        if pos < 0:
            raise KeyError(f"item {item_id} is not held")
        for name, lane in lanes.items():
            if name not in self.lanes:
                self.lanes[name] = _Lane(lane.keys.shape[0], lane.keys.shape[1])
            self.lanes[name].add(pos, lane)

    def set_text_key(self, item_id: int, text_key: np.ndarray) -> None:
        """Replace the text key of an item held (its transcript was revised)."""
        pos = self.position(item_id)
        if pos < 0 or self.text is None:
            raise KeyError(f"item {item_id} is not held with a text key")
        self.text.view[pos] = text_key
        self.has_text.view[pos] = True

    def position(self, item_id: int) -> int:
        """Position of `item_id` (ids are ascending), or -1 when not held."""
        ids = self.ids.view
        i = int(np.searchsorted(ids, item_id))
        return i if i < len(ids) and ids[i] == item_id else -1

    def text_scores(self, q: np.ndarray) -> np.ndarray:
        """Cosine of unit `q` [E] with every item's text key; -inf for items without text."""
        if self.text is None:
            return np.full(len(self), -np.inf, dtype=np.float32)
        if q.shape[0] != self.text.data.shape[1]:
            dim = self.text.data.shape[1]
            raise ValueError(f"question embedding has {q.shape[0]} dims, the stored text keys have {dim}")
        return np.where(self.has_text.view, self.text.view @ q, -np.inf).astype(np.float32)

    def lane_scores(self, lane: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Max cosine of unit `q` [D] over each item's keys of `lane` and the time of that key (-inf: no lane)."""
        scores = np.full(len(self), -np.inf, dtype=np.float32)
        times = np.zeros(len(self), dtype=np.float64)
        held = self.lanes.get(lane)
        if held is None or held.pos.n == 0:
            return scores, times
        if q.shape[0] != held.dim:
            raise ValueError(f"query for lane {lane!r} has {q.shape[0]} dims, the lane's keys have {held.dim}")
        sims = held.keys.view @ q  # [M, R]
        best = sims.argmax(axis=1)
        rows = np.arange(len(best))
        scores[held.pos.view] = sims[rows, best]
        times[held.pos.view] = held.times.view[rows, best]
        return scores, times

    def set_parent(self, item_id: int, parent: int) -> None:
        pos = self.position(item_id)
        if pos >= 0:
            self.parent.data[pos] = parent

    def drop_oldest(self, k: int) -> None:
        """Forget the `k` oldest items from RAM (their rows stay in the store)."""
        keep = np.arange(len(self)) >= k
        for arr in (self.ids, self.t_start, self.t_end, self.parent, self.has_text):
            arr.keep(keep)
        if self.text is not None:
            self.text.keep(keep)
        for lane in self.lanes.values():
            lane_keep = lane.pos.view >= k
            for arr in (lane.keys, lane.times, lane.pos):
                arr.keep(lane_keep)
            lane.pos.data[: lane.pos.n] -= k

    def nbytes(self) -> int:
        """Bytes allocated by this index (capacity, not only the rows in use)."""
        arrays = [self.ids, self.t_start, self.t_end, self.parent, self.has_text]
        arrays += [self.text] if self.text is not None else []
        for lane in self.lanes.values():
            arrays += [lane.keys, lane.times, lane.pos]
        return sum(a.data.nbytes for a in arrays)
