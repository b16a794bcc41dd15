"""A child process that streams into a memory store until it is killed (for test_crash.py).

Usage: python -m tests.memory.crash_child DIR SESSION SEED. Prints "ready", then "flushed N" each time N events
of this session are known committed. Summaries are written meanwhile, slowly (20 ms each), so a kill lands
inside consolidation too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from memory.consolidator import ConsolidatorConfig, concat_summary
from memory.segmenter import SegmenterConfig
from memory.session import Memory, MemoryConfig
from memory.store import MemoryStore
from memory.testing import HashingEmbedder


def slow_summary(texts: Sequence[str]) -> str:
    time.sleep(0.02)
    return concat_summary(texts)


def main(folder: str, session: str, seed: int) -> None:
    cfg = MemoryConfig(segmenter=SegmenterConfig(min_s=1.0, max_s=4.0),
                       consolidator=ConsolidatorConfig(every_events=3, fan_in=3))
    memory = Memory(MemoryStore.open(folder), HashingEmbedder(64), cfg, summarize=slow_summary)
    mem = memory.open_session("crash-user", session, started_at=1_800_000_000.0 + seed * 10_000)
    rng = np.random.default_rng(seed)
    print("ready", flush=True)
    t = 0
    while True:
        mem.add_frame("video", float(t), rng.standard_normal((16, 32)))
        if t % 3 == 0:
            mem.add_utterance("user", f"utterance {t} of session {session}", float(t), t + 0.5)
        t += 1
        if t % 20 == 0:
            memory.flush()
            print(f"flushed {memory.stats.events}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
