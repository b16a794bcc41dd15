"""`omni ui` and `omni desktop` as commands: flags, the page and its forwarded signaling, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from omni.app.cli import build_parser, main
from tests.app.test_serve_cli import free_port


def test_ui_and_desktop_are_subcommands_with_local_defaults() -> None:
    ui = build_parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1" and ui.port == 7860 and ui.server is None and ui.engine == "embedded"
    desk = build_parser().parse_args(["desktop", "--input-device", "3", "--camera", "/dev/video0"])
    assert desk.input_device == "3" and desk.camera == "/dev/video0" and not desk.full_duplex and desk.server is None


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_ui_refuses_a_port_out_of_range_as_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused by the parser, before any engine loads (the bind's OverflowError was a traceback)."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["ui", "--port", port])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port:" in err and ("0-65535" in err or "not a port number" in err)


@pytest.mark.parametrize("server", ["ftp://x", "ws://127.0.0.1:8080", "127.0.0.1:8080"])
def test_ui_refuses_a_server_that_is_not_an_http_url(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gradio")
    assert main(["ui", "--server", server]) == 2
    assert "--server must be an http:// or https:// URL" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ui", "desktop"])
def test_omni_engine_on_a_device_torch_cannot_use_is_a_one_line_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gradio" if command == "ui" else "sounddevice", exc_type=OSError)
    assert main([command, "--engine", "omni", "--model", "unused", "--device", "bogus"]) == 1
    assert "--device 'bogus': not a torch device" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():  # was torch's AssertionError traceback
        assert main([command, "--engine", "omni", "--model", "unused", "--device", "cuda"]) == 1
        assert "--device cuda: this torch has no CUDA device" in capsys.readouterr().err


def test_every_subcommand_help_opens_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("chat", "bench", "serve", "ui", "desktop", "memory"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert f"omni {command}: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--help"])
    assert 'omni chat --prompt "What is the capital of France?"' in capsys.readouterr().out


def test_desktop_list_devices_says_when_there_are_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = pytest.importorskip("sounddevice", exc_type=OSError)
    monkeypatch.setattr(sd, "query_devices", lambda: sd.DeviceList([]))
    assert main(["desktop", "--list-devices"]) == 1
    assert "no sound devices found" in capsys.readouterr().err


def test_desktop_rejects_a_server_that_is_not_a_websocket_url(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sounddevice", exc_type=OSError)
    assert main(["desktop", "--server", "http://127.0.0.1:8080"]) == 1
    assert "ws:// or wss://" in capsys.readouterr().err


def test_desktop_echo_handling_follows_what_is_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--echo auto: echo cancellation when the aec extra is installed, else half duplex; --echo aec without it
    is a clear error (before any engine loads)."""
    pytest.importorskip("sounddevice", exc_type=OSError)
    from omni.app.desktop import aec_available

    bad_server = ["desktop", "--server", "http://127.0.0.1:8080"]  # stops right after the echo choice
    assert main(bad_server) == 1
    assert f"echo handling: {'aec' if aec_available() is None else 'half'}" in capsys.readouterr().err
    monkeypatch.setattr("omni.app.desktop.aec_available", lambda: "no echo canceller (simulated)")
    assert main(bad_server) == 1
    assert "echo handling: half" in capsys.readouterr().err
    assert main(["desktop", "--echo", "aec"]) == 1
    assert "--echo aec: no echo canceller (simulated)" in capsys.readouterr().err
    assert main([*bad_server, "--full-duplex"]) == 1
    assert "echo handling: off" in capsys.readouterr().err


def test_omni_ui_serves_the_page_and_forwards_signaling_to_its_server() -> None:
    pytest.importorskip("gradio")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni.app.cli", "ui", "--engine", "test", "--port", str(port),
         "--ice-host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        line = ""
        while "omni ui: open" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "omni ui exited before printing its URL"
            assert time.monotonic() < deadline, "omni ui did not print its URL within 120 s"
        url = f"http://127.0.0.1:{port}"
        assert line.strip().startswith(f"omni ui: open {url}/")
        config = urllib.request.urlopen(url + "/config", timeout=30).read().decode()  # gradio renders from it
        script = urllib.request.urlopen(url + "/omni/static/app.js", timeout=30).read().decode()
        assert "omni-block" in config and 'id=\\"transcript\\"' in config and "/v1/realtime/calls" in script
        bad = urllib.request.Request(url + "/v1/realtime/calls", data=b"not sdp", method="POST",
                                     headers={"Content-Type": "application/sdp"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=30)
        # The omni server's own answer to a bad offer, passed through unchanged.
        assert e.value.code == 400 and "bad offer" in e.value.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_omni_ui_api_key_guards_its_server_and_the_page_sends_it(how: str) -> None:
    """`omni ui --api-key KEY` (or OMNI_API_KEY): the in-process server requires the key, and the page's server
    sends it for the browser, so a keyless request through the page is let in while one straight to the omni
    server is refused."""
    pytest.importorskip("gradio")
    import os

    key = "sk-omni-ui-cli-test-0123456789"
    port = free_port()
    argv = [sys.executable, "-m", "omni.app.cli", "ui", "--engine", "test", "--port", str(port),
            "--ice-host", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if k != "OMNI_API_KEY"}
    if how == "flag":
        argv += ["--api-key", key]
    else:
        env["OMNI_API_KEY"] = key
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        line = ""
        while "omni ui: open" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "omni ui exited before printing its URL"
            assert time.monotonic() < deadline, "omni ui did not print its URL within 120 s"
        server = line.split("(omni server ")[1].split(";")[0]
        page = f"http://127.0.0.1:{port}"

        def secrets(base: str) -> int:
            req = urllib.request.Request(base + "/v1/realtime/client_secrets", data=b"", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        assert secrets(server) == 401  # the in-process server has the key
        assert secrets(page) == 200  # the page's server sent it
    finally:
        proc.terminate()
        proc.wait(30)
