"""benchmarks/omni_sessions.py keeps running for Qwen3-Omni: two sessions batched and one at a time on the tiny
checkpoint, every reply to its end (the row's numbers are printed, not checked: they are timings)."""

from __future__ import annotations

import pytest

from benchmarks.omni_sessions import main

pytest.importorskip("transformers")  # the tiny checkpoint is built with it


def test_the_qwen3_rows_run_on_the_tiny_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--family", "qwen3", "--sessions", "2", "--repeats", "1", "--tokens", "3", "--codes", "4",
          "--window", "64"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["qwen3"]]
    assert [r[1:3] for r in rows] == [["2", "batched"], ["2", "unbatched"]]
    assert float(rows[0][-1]) > 1 and float(rows[1][-1]) == 1  # sessions per pool forward: batched, then alone
