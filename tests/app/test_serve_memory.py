"""`omni serve`'s memory flags: which memory a server gets, and the combinations it refuses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.serve import add_arguments, open_memory


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv", [("--no-memory", "--memory-dir", "x"), ("--memory-dir", "x", "--memory-url", "y")])
def test_conflicting_memory_flags_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="--memory"):
        open_memory(parse(*argv))


def test_no_memory_and_engines_without_it_get_none(tmp_path: Path) -> None:
    assert open_memory(parse("--no-memory")) is None
    assert open_memory(parse("--engine", "test", "--memory-dir", str(tmp_path))) is None
    assert not any(tmp_path.iterdir())  # nothing was opened there


def test_the_embedded_engine_gets_a_store_in_memory_dir(tmp_path: Path) -> None:
    hub = open_memory(parse("--memory-dir", str(tmp_path / "mem")))
    assert hub is not None
    try:
        lane = hub.open("alice", "s1")
        lane.user_turn("My name is Alice.", 0)
        lane.close()
    finally:
        hub.close()
    assert (tmp_path / "mem").is_dir() and any((tmp_path / "mem").iterdir())


def test_the_embedded_engine_summarises_with_its_lm_and_the_omni_engine_gets_memory(tmp_path: Path) -> None:
    from model.loaders import load_lm
    from streaming.engines.embedded import EmbeddedEngine
    from streaming.memory_summary import WorkerSummarizer

    engine = EmbeddedEngine(lm=load_lm(), speak=False, listen=False)
    hub = open_memory(parse("--memory-dir", str(tmp_path / "a")), engine)
    assert hub is not None
    try:
        assert isinstance(hub.summarizer, WorkerSummarizer) and hub.memory.consolidator is not None
    finally:
        hub.close()
    omni = open_memory(parse("--engine", "omni", "--memory-dir", str(tmp_path / "b")))
    assert omni is not None
    try:  # no L2 for the omni engine yet: its memory has no summarizer
        assert omni.summarizer is None and omni.memory.consolidator is None
    finally:
        omni.close()
