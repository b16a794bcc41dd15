"""`omni memory ...` through omni.app.memory_cli.register on its own parser (omni/app/cli.py wires it in separately)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from omni.app import memory_cli
from omni.memory.session import Memory
from omni.memory.store import MemoryStore
from omni.model.embedded.text_embedding import TextEmbedder


def _omni(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="omni")
    memory_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.run(args))


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


def test_list_search_show_export_forget(
    tmp_path: Path, embedder: TextEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mem"
    memory = Memory(MemoryStore.open(folder), embedder)
    for user, fact in (("ann", "my locker code is 4719"), ("bob", "my bike is the green one")):
        mem = memory.open_session(user, f"s-{user}", started_at=1_800_000_000.0)
        mem.add_utterance("user", fact, 1.0, 2.0)
        mem.add_utterance("user", "the weather is nice today", 20.0, 21.0)
        mem.close(30.0)
    memory.close()
    memory.store.close()
    base = ["memory", "--memory-dir", str(folder)]

    assert _omni([*base, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["ann", "bob"]
    assert _omni([*base, "search", "--user", "ann", "-k", "2", "which code opens my locker"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "4719" in first and "green" not in first
    assert _omni([*base, "--json", "list", "--user", "ann"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert _omni([*base, "show", "--user", "ann", items[0]["item"]]) == 0
    assert json.loads(capsys.readouterr().out)["item"] == items[0]["item"]
    assert _omni([*base, "show", "--user", "ann", "L9:1"]) == 1
    assert "expected L1:<id>" in capsys.readouterr().err
    assert _omni([*base, "export", "--user", "ann", "--out", str(tmp_path / "export")]) == 0
    doc = json.loads(Path(capsys.readouterr().out.strip()).read_text())
    assert doc["user"] == "ann" and any("4719" in i["text"] for i in doc["items"])
    assert _omni([*base, "forget", "--user", "ann"]) == 2  # no terminal to confirm on: refuses without --yes
    assert _omni([*base, "forget", "--user", "ann", "--yes"]) == 0
    assert capsys.readouterr().out.startswith("removed 3 rows")  # its event, its fact note, its session
    assert _omni([*base, "list"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["bob"]


def test_a_store_that_cannot_be_opened_or_written_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "mem").mkdir()
    cases = [
        (["--memory-dir", str(a_file), "list"], f"--memory-dir {a_file}: a file, not a folder"),
        (["--memory-dir", str(a_file / "below"), "list"], f"no memory store at {a_file / 'below'}"),
        (["--memory-url", "bogus://x", "list"], "cannot open the memory store --memory-url: memory store location"),
        (["--memory-dir", str(tmp_path / "mem"), "search", "--user", "ann", "-k", "0", "hi"], "-k must be >= 1"),
        (["--memory-dir", str(tmp_path / "mem"), "export", "--user", "ann", "--out", str(a_file)],
         "omni memory export: Not a directory"),
    ]
    for argv, message in cases:
        assert _omni(["memory", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_folder_that_does_not_exist_is_an_error_and_stays_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(was: `list` on a mistyped --memory-dir created an empty store there and printed nothing)"""
    missing = tmp_path / "typo"
    out = str(tmp_path / "x")
    for argv in (["list"], ["search", "--user", "ann", "hi"], ["export", "--user", "ann", "--out", out]):
        assert _omni(["memory", "--memory-dir", str(missing), *argv]) == 1
        err = capsys.readouterr().err
        assert f"no memory store at {missing}" in err and len(err.strip().splitlines()) == 1, err
    assert not missing.exists() and not (tmp_path / "x").exists()


def test_an_unreachable_postgresql_is_a_one_line_error_that_hides_the_password(
    capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="the postgresql store needs psycopg")
    url = "postgresql://ann:s3cret@127.0.0.1:1/omni?connect_timeout=5"  # port 1: refused at once on loopback
    assert _omni(["memory", "--memory-url", url, "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("omni memory: cannot open the memory store --memory-url: ") and "s3cret" not in err
    assert len(err.strip().splitlines()) == 1, err
