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


def test_the_token2wav_rows_run_and_batched_chunks_match(capsys: pytest.CaptureFixture[str]) -> None:
    """The token2wav table (Qwen2.5-Omni tiny checkpoint): a row per number of sessions and kind of chunks; its
    last column, max |batched - alone| over the chunks' samples, stays at float rounding (see
    tests/model/test_token2wav_batch.py)."""
    main(["--token2wav-only", "--sessions", "1,2", "--repeats", "1", "--solver-steps", "2"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1]) for r in rows] == [("1", "steady"), ("1", "mixed"), ("2", "steady"), ("2", "mixed")]
    assert float(rows[0][-1]) == 0.0 and all(float(r[-1]) < 1e-3 for r in rows)  # one session: the same path


def test_the_code2wav_rows_run_and_batched_chunks_match(capsys: pytest.CaptureFixture[str]) -> None:
    """The Qwen3 Code2Wav table (tiny checkpoint): a row per number of sessions and kind of chunks; max |batched -
    alone| is 0 for one session (the same path) and float32 rounding on the tiny model's saturated output (~2e-3,
    see tests/model/test_code2wav_batch.py for the float64 bound) otherwise."""
    main(["--family", "qwen3", "--token2wav-only", "--sessions", "1,2", "--repeats", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1]) for r in rows] == [("1", "steady"), ("1", "mixed"), ("2", "steady"), ("2", "mixed")]
    assert float(rows[0][-1]) == 0.0 and all(float(r[-1]) < 1e-2 for r in rows)
