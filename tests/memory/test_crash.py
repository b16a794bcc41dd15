"""kill -9 at random moments (fixed seed) while a real child process streams and consolidates: the store opens,
everything the child knew committed is there and consistent, and it keeps working."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memory.session import Memory
from memory.store import MemoryStore
from memory.testing import HashingEmbedder

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(folder: str, session: str, seed: int, delay: float) -> int:
    """Start the child, kill -9 it `delay` s after it is ready; returns the events it had reported committed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.memory.crash_child", folder, session, str(seed)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.stderr else line
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, err
    flushed = [int(x.split()[1]) for x in out.splitlines() if x.startswith("flushed")]
    return flushed[-1] if flushed else 0


def _check_consistent(store: MemoryStore, user: str) -> None:
    events = store.load_events(user)
    ids = {e.id for e in events}
    for e in events:
        for lane in e.lanes:
            p = store.load_payload(user, e.id, lane)  # every row's payload is readable
            assert p.tokens.shape[0] == len(p.times) > 0
    summaries = {s.id: s for s in store.load_summaries(user)}
    for s in summaries.values():
        kids = ids if s.level == 1 else set(summaries)
        assert set(s.children) <= kids
    for e in events:
        assert e.summary_id == 0 or e.id in summaries[e.summary_id].children


@pytest.mark.slow
def test_kill_9_at_random_points_loses_at_most_the_open_event(store_location: str) -> None:
    folder = store_location  # a directory (SQLite + shards) or a database on the test PostgreSQL server
    rng = random.Random(1234)
    committed: dict[str, int] = {}
    for i in range(5):
        session = f"s{i}"
        committed[session] = _run_and_kill(folder, session, seed=i, delay=rng.uniform(0.3, 1.5))
        if "://" not in folder:
            conn = sqlite3.connect(Path(folder) / "memory.sqlite3")
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        store = MemoryStore.open(folder)
        _check_consistent(store, "crash-user")
        per_session = {}
        for e in store.load_events("crash-user"):
            per_session[e.session_id] = per_session.get(e.session_id, 0) + 1
        for s, n in committed.items():
            assert per_session.get(s, 0) >= n, (s, per_session, committed)
        store.close()
    assert sum(committed.values()) > 0  # the kills landed after some commits, not only before the first
    # The store keeps working after the crashes: new events append after any torn shard tail, recall finds them.
    memory = Memory(MemoryStore.open(folder), HashingEmbedder(64))
    mem = memory.open_session("crash-user", "after", started_at=1_900_000_000.0)
    mem.add_frame("video", 0.0, np.ones((16, 32)))
    mem.add_utterance("user", "the store survived five crashes", 0.0, 1.0)
    mem.close(2.0)
    r = memory.open_session("crash-user", "after2").recall(memory.embed(["store survived crashes"])[0], "", 200)
    assert "survived" in r.text
    _check_consistent(memory.store, "crash-user")
    memory.close()
