"""kill -9 at seeded points while a real child process streams and consolidates: the store opens, everything the
child knew committed is there, unchanged (the rebuilt index hashes as the child's did) and consistent, and it keeps
working. Kill points are gates the child waits at (crash_child.py), so load cannot move them."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from omni.memory.session import Memory
from omni.memory.store import MemoryStore
from omni.memory.testing import HashingEmbedder
from omni.memory.user_index import UserIndex
from tests.memory.crash_child import index_digest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Commit:
    """A "committed" line of the child: its session's events known committed, and its RAM index at that moment."""

    events: int
    index_events: int
    index_summaries: int
    digest: str


PHASES = ("frame", "commit", "consolidation", "summary")  # ingest, inside the two transactions, inside the LM


def _run_and_kill(folder: str, session: str, seed: int, phase: str, after_commits: int, skip: int) -> Commit:
    """Run the child and answer its gates until it has reported `after_commits` commits; then let `skip` more gates
    of `phase` pass and kill -9 it at the next one. Returns the last commit it reported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.memory.crash_child", folder, session, str(seed)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    commits: list[Commit] = []
    try:
        assert child.stdin is not None and child.stdout is not None
        while True:
            line = child.stdout.readline()
            assert line, f"the child ended before the kill: {child.stderr.read() if child.stderr else ''}"
            words = line.split()
            if words[0] == "ready":  # the consolidator may open gates before (the sessions killed earlier)
                continue
            if words[0] == "committed":
                commits.append(Commit(int(words[1]), int(words[2]), int(words[3]), words[4]))
                continue
            assert words[0] == "gate" and words[1] in PHASES, line
            if len(commits) >= after_commits and words[1] == phase:
                if skip == 0:
                    break  # the child waits at this gate: kill it there
                skip -= 1
            child.stdin.write("go\n")
            child.stdin.flush()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for f in (child.stdin, child.stdout, child.stderr):
            if f is not None:
                f.close()
    assert child.returncode == -signal.SIGKILL
    assert commits and commits[-1].events > 0
    return commits[-1]


def _check_consistent(store: MemoryStore, user: str) -> None:
    """Every row's payload reads back, and summary pointers agree both ways (a summary whose transaction was torn
    by the kill is not there: its children still point nowhere, or at a summary that exists)."""
    events = store.load_events(user)
    ids = {e.id for e in events}
    for e in events:
        for lane in e.lanes:
            p = store.load_payload(user, e.id, lane)
            assert p.tokens.shape[0] == len(p.times) > 0
    summaries = {s.id: s for s in store.load_summaries(user)}
    parent_of = {e.id: e.summary_id for e in events} | {s.id + 10**9: s.parent_id for s in summaries.values()}
    for s in summaries.values():
        assert set(s.children) <= (ids if s.level == 1 else set(summaries))
        offset = 0 if s.level == 1 else 10**9
        assert all(parent_of[c + offset] == s.id for c in s.children), (s.id, s.children)
    for e in events:
        assert e.summary_id == 0 or e.id in summaries[e.summary_id].children
    for s in summaries.values():
        assert s.parent_id == 0 or s.id in summaries[s.parent_id].children


@pytest.mark.slow
def test_kill_9_at_random_points_loses_at_most_the_open_event(store_location: str) -> None:
    """Eight children, each killed after 1-3 commits at a seeded point of one phase (ingest, inside an event's
    transaction, inside a summary's transaction, inside the summarizer). The kill points are gates the child waits
    at, not delays, so the machine's load cannot move them before the first commit."""
    folder = store_location  # a directory (SQLite + shards) or a database on the test PostgreSQL server
    rng = random.Random(1234)
    committed: dict[str, int] = {}
    for i in range(8):
        session = f"s{i}"
        phase = PHASES[i % len(PHASES)]
        last = _run_and_kill(folder, session, seed=i, phase=phase, after_commits=rng.randint(1, 3),
                             skip=rng.randint(0, 3))
        committed[session] = last.events
        if "://" not in folder:
            conn = sqlite3.connect(Path(folder) / "memory.sqlite3")
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        store = MemoryStore.open(folder)
        _check_consistent(store, "crash-user")
        per_session: dict[str, int] = {}
        for e in store.load_events("crash-user"):
            per_session[e.session_id] = per_session.get(e.session_id, 0) + 1
        for s, n in committed.items():
            assert per_session.get(s, 0) >= n, (phase, s, per_session, committed)
        # Restart identity: the index rebuilt from the store starts with exactly what the child held at its last
        # commit (later commits, before the kill, may follow it).
        restored = UserIndex.load(store, "crash-user")
        assert len(restored.events) >= last.index_events and len(restored.summaries) >= last.index_summaries
        assert index_digest(restored, last.index_events, last.index_summaries) == last.digest, (phase, session)
        store.close()
    # The store keeps working after the crashes: new events append after any torn shard tail, recall finds them.
    memory = Memory(MemoryStore.open(folder), HashingEmbedder(64))
    mem = memory.open_session("crash-user", "after", started_at=1_900_000_000.0)
    mem.add_frame("video", 0.0, np.ones((16, 32)))
    mem.add_utterance("user", "the store survived eight crashes", 0.0, 1.0)
    mem.close(2.0)
    r = memory.open_session("crash-user", "after2").recall(memory.embed(["store survived crashes"])[0], "", 200)
    assert "survived" in r.text
    _check_consistent(memory.store, "crash-user")
    memory.close()
