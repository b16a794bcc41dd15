"""`omni serve`'s memory flags: which memory a server gets, and the combinations it refuses."""

from __future__ import annotations

import argparse
import errno
import logging
from pathlib import Path

import pytest

from omni.app.realtime_server import ServeOptions, Server
from omni.app.serve import add_arguments, open_memory
from omni.streaming.engines.tone import ToneEngine


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv", [("--no-memory", "--memory-dir", "x"), ("--memory-dir", "x", "--memory-url", "y"),
                                  ("--no-memory", "--memory-persist-anonymous")])
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


@pytest.mark.parametrize("persist", [False, True])
def test_anonymous_calls_are_forgotten_unless_memory_persist_anonymous(tmp_path: Path, persist: bool) -> None:
    flags = ("--memory-persist-anonymous",) if persist else ()
    hub = open_memory(parse("--memory-dir", str(tmp_path / "mem"), *flags))
    assert hub is not None and hub.memory.config.persist_anonymous is persist
    try:
        lane = hub.open(None, "call-1")
        lane.user_turn("My locker code is 4719.", 0)
        lane.close()
        kept = [n.text for n in hub.memory.store.load_notes("anon:call-1")]
        named = hub.open("alice", "call-2")  # a named user's memory stays either way
        named.user_turn("My name is Alice.", 0)
        named.close()
        assert "My name is Alice." in {n.text for n in hub.memory.store.load_notes("alice")}
    finally:
        hub.close()
    assert ("My locker code is 4719." in kept) is persist and bool(kept) is persist


def test_an_unwritable_memory_dir_degrades_to_memory_for_this_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--memory-dir under a regular file cannot be created (a real OSError, also as root, unlike chmod): the
    server starts with memory that lasts while it runs, and says so once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, "omni.serve"):
        hub = open_memory(parse("--memory-dir", str(blocker / "mem")))
    assert hub is not None
    warnings = [r.getMessage() for r in caplog.records if "cannot open the memory store" in r.getMessage()]
    assert len(warnings) == 1 and "lasts only while this server runs" in warnings[0]
    try:
        lane = hub.open("alice", "s1")
        lane.user_turn("My locker code is 4719.", 0)
        lane.roll_up(10_000, 100, 0)  # out of the window: into memory
        hub.memory.flush()
        assert "4719" in lane.slot("what is my locker code?")
        lane.close()
    finally:
        hub.close()
    assert not (blocker / "mem").exists()


def test_a_database_that_is_down_degrades_without_showing_the_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--memory-url naming a PostgreSQL server that refuses the connection (port 1 on loopback): psycopg's error
    used to end `omni serve` in a traceback. The server starts with memory for this run, and its warning names the
    flag, not the URL, which may hold a password."""
    pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg (the serve extra)")
    with caplog.at_level(logging.WARNING, "omni.serve"):
        hub = open_memory(parse("--memory-url", "postgresql://alice:s3cret@127.0.0.1:1/omni"))
    assert hub is not None
    try:
        warnings = [r.getMessage() for r in caplog.records if "cannot open the memory store" in r.getMessage()]
        assert len(warnings) == 1 and "--memory-url" in warnings[0] and "s3cret" not in warnings[0]
    finally:
        hub.close()


async def test_a_full_disk_mid_session_warns_once_counts_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write fails with ENOSPC after the session opened: one warning (no traceback per record), the
    failures counted in /metrics, recall keeps answering from what it has, and the session closes normally."""
    hub = open_memory(parse("--memory-dir", str(tmp_path / "mem")))
    assert hub is not None
    server = Server(ToneEngine(), ServeOptions(memory=hub))
    lane = hub.open("bob", "s1")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    hub.memory.store.commit_event = full  # type: ignore[method-assign,assignment]
    hub.memory.store.insert_note = full  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            lane.user_turn(f"turn {i}: my favourite colour is green.", i * 10)
            lane.roll_up(i * 10 + 10_000, 100, 0)
            assert isinstance(lane.slot(f"question {i}"), str)  # the turn still gets its recall slot
        lane.close()
    writer = [r for r in caplog.records if "memory writer cannot persist" in r.getMessage()]
    assert len(writer) == 1 and not writer[0].exc_info
    assert any("was not fully persisted" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)
    errors = hub.memory.stats.write_errors
    assert errors >= 5
    hub.memory.store.begin_session = full  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING):
        assert hub.try_open("bob", "s2") is None  # a new session on the full disk: no long-term memory, no error
    assert any("s2 runs without long-term memory" in r.getMessage() for r in caplog.records)
    page = (await server.metrics_page(None)).text  # type: ignore[arg-type]
    assert page is not None and f"omni_memory_write_errors {errors:g}" in page
    assert "omni_memory_open_failures 1" in page
    hub.close()


def test_the_embedded_engine_summarises_with_its_lm_and_the_omni_engine_gets_memory(tmp_path: Path) -> None:
    from omni.model.loaders import load_lm
    from omni.streaming.engines.embedded import EmbeddedEngine
    from omni.streaming.memory_summary import WorkerSummarizer

    engine = EmbeddedEngine(lm=load_lm(), speak=False, listen=False)
    hub = open_memory(parse("--memory-dir", str(tmp_path / "a")), engine)
    assert hub is not None
    try:
        assert isinstance(hub.summarizer, WorkerSummarizer) and hub.memory.consolidator is not None
    finally:
        hub.close()
    omni = open_memory(parse("--engine", "omni", "--memory-dir", str(tmp_path / "b")))
    assert omni is not None
    try:  # opened without its engine (no Thinker to summarise with): no summarizer, no Thinker text space
        assert omni.summarizer is None and omni.memory.consolidator is None and omni.memory.text_spaces == {}
    finally:
        omni.close()
