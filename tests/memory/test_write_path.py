"""The write path's policies: back-pressure instead of loss, errors that surface, codec and archive checks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from omni.memory.archive import ArchiveError, ShardArchive
from omni.memory.codec import array_from_bytes, array_to_bytes, payload_from_bytes, payload_to_bytes
from omni.memory.consolidator import Consolidator, ConsolidatorConfig
from omni.memory.session import Memory, MemoryConfig, MemoryWriteError
from omni.memory.store import MemoryStore
from omni.memory.testing import HashingEmbedder
from omni.memory.types import FramePayload

T0 = 1_800_000_000.0


class _GatedEmbedder:
    """Blocks every call until released: a writer that cannot keep up."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.gate = threading.Event()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.gate.wait(10)
        return self.inner(texts)


def test_a_full_writer_queue_makes_the_caller_wait_and_loses_nothing(tmp_path: Path) -> None:
    embed = _GatedEmbedder()
    memory = Memory(MemoryStore.open(tmp_path / "m"), embed, MemoryConfig(write_queue_max=2))
    mem = memory.open_session("ann", "s", started_at=T0)
    done = threading.Event()

    def produce() -> None:
        for i in range(6):  # 6 facts: the writer holds 1, the queue 2, the 4th put has to wait
            mem.add_fact(f"fact number {i}", float(i))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.3)  # waiting for room, not dropping
    assert memory.stats.write_stalls >= 1
    embed.gate.set()
    producer.join(10)
    memory.flush()
    assert sorted(n.text for n in memory.store.load_notes("ann")) == [f"fact number {i}" for i in range(6)]
    memory.close()


def test_writer_failures_surface_on_flush_and_the_writer_goes_on(tmp_path: Path) -> None:
    calls = []

    def flaky(texts: Sequence[str]) -> np.ndarray:
        calls.append(texts[0])
        if "boom" in texts[0]:
            raise RuntimeError("embedding failed")
        return HashingEmbedder()(texts)

    memory = Memory(MemoryStore.open(tmp_path / "m"), flaky)
    mem = memory.open_session("ann", "s", started_at=T0)
    mem.add_fact("boom goes the first", 1.0)
    mem.add_fact("the second is fine", 2.0)
    with pytest.raises(MemoryWriteError, match="1 records lost") as info:
        memory.flush()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert [n.text for n in memory.store.load_notes("ann")] == ["the second is fine"]
    memory.flush()  # reported once
    memory.close()


def test_consolidator_refuses_an_empty_summary(tmp_path: Path) -> None:
    store = MemoryStore.open(tmp_path / "m")
    memory = Memory(store, HashingEmbedder())
    mem = memory.open_session("ann", "s", started_at=T0)
    for i in range(3):
        mem.add_utterance("user", f"turn {i} of the talk", 12.0 * i, 12.0 * i + 1)
        mem.turn_boundary(12.0 * i + 11)
    mem.close(40.0)
    cons = Consolidator(store, memory.user_index, lambda texts: "  ", HashingEmbedder(),
                        ConsolidatorConfig(every_events=2))
    with pytest.raises(ValueError, match="empty summary"):
        cons.run_once("ann", "s")
    assert store.load_summaries("ann") == [] and all(e.summary_id == 0 for e in store.load_events("ann"))
    memory.close()


def test_codec_round_trip_and_malformed_bytes() -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = array_from_bytes(array_to_bytes(a))
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.float32 and b.flags.writeable
    with pytest.raises(ValueError, match="header describes"):
        array_from_bytes(array_to_bytes(a) + b"x")
    p = FramePayload(times=np.array([1.0, 2.0]), tokens=np.ones((2, 3, 4), np.float16))
    q = payload_from_bytes(payload_to_bytes(p))
    np.testing.assert_array_equal(q.tokens, p.tokens)
    with pytest.raises(ValueError, match="malformed"):
        payload_from_bytes(array_to_bytes(np.zeros(3)) + array_to_bytes(np.zeros((2, 1, 1), np.float16)))


def test_shard_archive_appends_rolls_over_and_reports_missing_bytes(tmp_path: Path) -> None:
    arch = ShardArchive(tmp_path, shard_bytes=100)
    refs = [arch.append("u", bytes([i]) * 60) for i in range(3)]
    assert [r.split(":")[1] for r in refs] == ["shard_000000.bin", "shard_000001.bin", "shard_000002.bin"]
    assert [arch.read("u", r) for r in refs] == [bytes([i]) * 60 for i in range(3)]
    shard = next((tmp_path / "shards").iterdir()) / "shard_000001.bin"  # the user's one folder
    shard.write_bytes(b"short")
    with pytest.raises(ArchiveError, match="holds only 5 of 60 bytes"):
        arch.read("u", refs[1])
    shard.unlink()
    with pytest.raises(ArchiveError, match="is missing"):
        arch.read("u", refs[1])
    with pytest.raises(ArchiveError, match="not of the form"):
        arch.read("u", "db:3")
    arch.forget("u")
    assert list((tmp_path / "shards").iterdir()) == []
