"""benchmarks/needle_stream.py keeps working: its tiny setting runs end to end and prints the whole table."""

from __future__ import annotations

import re

import pytest

from benchmarks import needle_stream


def test_tiny_needle_stream_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert needle_stream.main(["--minutes", "2", "--embedder", "hash"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("Needle-in-a-Stream (standard), seed 0, budget 2048")
    rows = {line[:40].strip(): line[40:].split() for line in lines[2:]}
    for _, label, _, _ in needle_stream.ROWS:
        assert label.strip() in rows, label
    # 2 minutes: 2 visual needles, 1 sound, 2 spoken facts; the idealised stream is found whole, and a restart
    # changes nothing.
    for label in ("Q1 visual needle recall", "Q2 spoken fact recall", "Q3 cross-modal (+-3 s)"):
        assert rows[label][0] == "100.0%", (label, rows[label])
    assert rows["Q8 identical items after restart"][0] == "yes"
    assert float(rows["Q8 post-restart recall delta (pts)"][0]) == 0.0
    assert re.fullmatch(r"\d+\.\d", rows["retrieval p95 (ms, ex-embedding)"][0])


def test_streams_are_deterministic() -> None:
    from benchmarks.needle_stream_data import make_stream

    a, b = make_stream(3, seed=5), make_stream(3, seed=5)
    assert a.turns == b.turns and [n.t for n in a.needles] == [n.t for n in b.needles]
    assert (a.video(100) == b.video(100)).all() and (a.audio(7) == b.audio(7)).all()
    assert [n.t for n in make_stream(3, seed=6).needles] != [n.t for n in a.needles]
