"""Cameras for `omni desktop`, through PyAV: a V4L2 device, an ffmpeg lavfi source (tests, demos) or a file."""

from __future__ import annotations

from typing import Any


def open_camera(spec: str) -> Any:
    """`/dev/videoN` (V4L2), `lavfi:GRAPH` (e.g. `lavfi:testsrc2=size=320x240:rate=15,realtime`; `realtime`
    paces a synthetic source like a camera) or a video file path; returns an open av container."""
    import av

    if not spec:
        raise ValueError("no camera given")
    if spec.startswith("lavfi:"):
        return av.open(spec[len("lavfi:"):], format="lavfi")
    if spec.startswith("/dev/video"):
        # 640x480 at 15 fps: the engine takes one frame per 0.5 s and scales it down, so more costs USB and CPU
        # for nothing.
        return av.open(spec, format="v4l2", options={"video_size": "640x480", "framerate": "15"})
    return av.open(spec)
