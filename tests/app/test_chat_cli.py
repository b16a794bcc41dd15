"""`omni chat` as a user and as a script would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni.app.chat import _OneLine
from omni.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _omni(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omni.app.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_piped_questions_get_one_reply_line_each() -> None:
    r = _omni("chat", stdin="What is the capital of France?\n\nWhat is the capital of Germany?\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert "Paris" in lines[0]
    assert "Berlin" in lines[1]


def test_piped_replies_with_line_breaks_stay_one_line_each() -> None:
    """A list-style reply has blank lines in it; piped, each question still gets exactly one output line."""
    r = _omni("chat", "--threads", "1", stdin="Name three colours.\nWhat is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert "Paris" in lines[1] and lines[0] == lines[0].strip()


@pytest.mark.parametrize(
    ("pieces", "line"),
    [
        (["\n\n1.", " Red", "\n", "\n2. Blue.  ", "\n\n"], "1. Red 2. Blue."),
        (["Hello", " ", "world", "!"], "Hello world!"),
        (["  a  b", "  ", "\n", "c"], "a  b c"),
    ],
)
def test_one_line_turns_streamed_line_breaks_into_single_spaces(pieces: list[str], line: str) -> None:
    flat = _OneLine()
    assert "".join(flat(p) for p in pieces) == line


def test_errors_exit_non_zero_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--model", str(tmp_path / "missing")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["chat", "--audio", str(tmp_path), "--prompt", "hi"]) == 1
    assert f"--audio {tmp_path}: a folder, not a file" in capsys.readouterr().err
    assert main(["chat", "--prompt", "  "]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    assert main(["chat", "--threads", "-1", "--prompt", "hi"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert main(["chat", "--model", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err
    for corrupt, message in ((b"[1]", "expected a JSON object, got list"), (b"\xff\xfe{", "not valid JSON")):
        (tmp_path / "config.json").write_bytes(corrupt)  # was: an AttributeError traceback / a UnicodeDecodeError
        assert main(["chat", "--model", str(tmp_path), "--prompt", "hi"]) == 1
        assert message in capsys.readouterr().err
    r = _omni("chat", stdin="\n\n")
    assert r.returncode == 1 and "no input lines" in r.stderr


@pytest.mark.parametrize("command", ["chat", "bench"])
def test_a_device_torch_cannot_use_is_a_one_line_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--device", "bogus"]) == 2
    assert "--device 'bogus': not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([command, "--device", "cuda"]) == 2
        assert "--device cuda: this torch has no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--new-tokens", "--repeats"])
def test_bench_refuses_nothing_to_measure(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", flag, "0", "--no-transformers"]) == 2
    assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def test_speak_to_a_path_that_cannot_be_written_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any model loads (the flag needs an Omni checkpoint, but its path is judged first)."""
    for where in (tmp_path, tmp_path / "missing" / "out.wav"):
        assert main(["chat", "--prompt", "hi", "--speak", str(where)]) == 1
        err = capsys.readouterr().err
        assert f"--speak {where}: cannot write a WAV file there" in err and "Traceback" not in err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "chat" in out and "bench" in out
