"""Stand-ins for a user's devices, shared by tests and benchmarks: Debian's Chromium with fake media (a WAV as
the microphone, a .y4m as the camera) and a private PulseAudio daemon with two virtual devices (a "mic" sink
whose monitor is the default source, and a "spk" sink as the default output), each on loopback or a unix
socket only."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def find_chromium() -> str | None:
    """Debian's Chromium (or `OMNI_CHROMIUM`); None where there is none (never downloads a browser)."""
    for candidate in (
        os.environ.get("OMNI_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_args(wav: Path, camera: Path | None = None) -> list[str]:
    """Headless Chromium flags: fake devices (the microphone plays `wav`, looped; the camera `camera`), no
    background traffic, loopback WebRTC without mDNS."""
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={os.path.abspath(wav)}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--no-default-browser-check",
    ]
    if camera is not None:
        args.append(f"--use-file-for-fake-video-capture={os.path.abspath(camera)}")
    return args


def write_y4m(path: Path, frames: int = 30, width: int = 160, height: int = 120) -> Path:
    """A moving gradient as YUV4MPEG2 (4:2:0), the format Chromium's fake camera plays (and loops)."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        x = np.arange(width, dtype=np.int32)[None, :] + np.arange(height, dtype=np.int32)[:, None]
        for i in range(frames):
            f.write(b"FRAME\n")
            f.write(((x + 8 * i) % 256).astype(np.uint8).tobytes())
            f.write(np.full((height // 2) * (width // 2) * 2, 128, np.uint8).tobytes())
    return path


def pulse_missing() -> str | None:
    """Why a PulseAudio conversation cannot run here, or None."""
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as e:
        return f"sounddevice unusable ({e}): pip install sounddevice, apt-get install libportaudio2"
    missing = [b for b in ("pulseaudio", "paplay", "parec", "pactl") if shutil.which(b) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install pulseaudio pulseaudio-utils (scripts/env.sh does)"
    return None


@dataclass
class Pulse:
    """A private PulseAudio daemon; `env` points child processes at it (PULSE_SERVER)."""

    env: dict[str, str]
    daemon: subprocess.Popen[bytes]
    _old: str | None = None

    def stop(self) -> None:
        if self._old is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = self._old
        self.daemon.terminate()
        self.daemon.wait(10)


def start_pulse(folder: Path, timeout: float = 20.0) -> Pulse:
    """Start a PulseAudio daemon on a unix socket in `folder` with the "mic" and "spk" null sinks (48 kHz mono),
    make this process's PortAudio see it, and return it. Raises RuntimeError (with the daemon's log) if it does
    not come up."""
    env = {**os.environ, "HOME": str(folder), "XDG_RUNTIME_DIR": str(folder)}
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disallow-exit",
         "-L", f"module-native-protocol-unix auth-anonymous=1 socket={folder}/native",
         "-L", "module-null-sink sink_name=spk rate=48000 channels=1",
         "-L", "module-null-sink sink_name=mic rate=48000 channels=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "log", "w"),
    )
    env["PULSE_SERVER"] = f"unix:{folder}/native"
    deadline = time.monotonic() + timeout
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise RuntimeError(f"PulseAudio did not start: {(folder / 'log').read_text()[-500:]}")
        time.sleep(0.1)
    subprocess.run(["pactl", "set-default-source", "mic.monitor"], env=env, check=True)
    subprocess.run(["pactl", "set-default-sink", "spk"], env=env, check=True)
    pulse = Pulse(env, daemon, os.environ.get("PULSE_SERVER"))
    os.environ["PULSE_SERVER"] = env["PULSE_SERVER"]  # read by ALSA's pulse plugin
    import sounddevice as sd

    # PortAudio lists ALSA's `pulse` device only if it could open it when PortAudio started: start it again.
    sd._terminate()
    sd._initialize()
    return pulse
