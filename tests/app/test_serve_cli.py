"""`omni serve` as a command: flags, the printed URL, the pages it serves, and bad settings."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from omni.app.cli import build_parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_is_a_subcommand_with_loopback_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8080 and args.engine == "embedded"
    assert args.ice_server == [] and args.ice_host == []
    args = build_parser().parse_args(
        ["serve", "--engine", "test", "--ice-host", "127.0.0.1", "--ice-server", "stun:127.0.0.1:3478"]
    )
    assert args.ice_host == ["127.0.0.1"] and args.ice_server == ["stun:127.0.0.1:3478"]


def test_bad_settings_exit_with_a_message() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "test", "--vad-threshold", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "VAD threshold must be in (0, 1)" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "test", "--semantic-eot", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "semantic end-of-turn threshold must be in [0, 1)" in r.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error_before_anything_loads(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(was: an OverflowError traceback from the socket's bind, after the engine had loaded)"""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--port", port])
    assert e.value.code == 2 and "--port" in capsys.readouterr().err


def test_an_unusable_device_for_the_omni_engine_is_one_line_before_loading() -> None:
    """(was: a traceback from deep in the loader; the device is checked before the checkpoint is read)"""
    r = subprocess.run(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "omni", "--model", "/nonexistent",
         "--device", "bogus"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1 and "--device 'bogus': not a torch device" in r.stderr
    assert "Traceback" not in r.stderr


def test_semantic_end_of_turn_flag() -> None:
    assert build_parser().parse_args(["serve"]).semantic_eot == 0.0  # off by default (README: Semantic end of turn)
    assert build_parser().parse_args(["serve", "--semantic-eot", "0"]).semantic_eot == 0.0  # off


def test_serve_prints_its_url_and_serves_the_demo_and_metrics() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni.app.cli", "serve", "--engine", "test", "--port", str(port),
         "--ice-host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening (or exits)
        assert f"http://127.0.0.1:{port}/" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = r.read().decode()
        assert "<title>omni</title>" in page and "/static/app.js" in page and "/static/controls.js" in page
        assert 'id="transcript"' in page and 'id="recalled"' in page and "<!--" not in page  # call.html in place
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.js", timeout=30) as r:
            assert b"oai-events" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            assert b"# TYPE omni_device_worker_queue gauge" in r.read()
    finally:
        proc.terminate()
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
