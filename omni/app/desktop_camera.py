"""Cameras for `omni desktop`, through PyAV: a V4L2 device, an ffmpeg lavfi source (tests, demos) or a file."""

from __future__ import annotations

import fractions
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


def jpeg_data_url(frame: Any, max_side: int = 640, quality: int = 5) -> str:
    """An av.VideoFrame as a `data:image/jpeg;base64,...` URL (a Realtime `input_image`), the longer side at most
    `max_side` (even sides); `quality` is FFmpeg's mjpeg qscale (2 best .. 31 worst; 5: about 20-40 kB at
    640x480). The server decodes it with `omni.streaming.media_files.decode_data_url`."""
    import base64

    import av

    scale = min(1.0, max_side / max(frame.width, frame.height))
    w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuvj420p"
    codec.time_base = fractions.Fraction(1, 1)
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    packets = codec.encode(frame.reformat(width=w, height=h, format="yuvj420p")) + codec.encode(None)
    return "data:image/jpeg;base64," + base64.b64encode(b"".join(bytes(p) for p in packets)).decode("ascii")
