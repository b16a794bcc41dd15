"""Media files a user attaches to a typed turn (`omni chat --audio/--image/--video`), decoded for the engine
interface: audio as float32 mono at 16 kHz (the engines' input rate), images and video frames as RGB uint8.
Decoding errors are ValueErrors that name the file."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import av
import numpy as np

from omni.model.encoders.audio_frontend import load_audio
from omni.model.encoders.vision_preprocess import VisionInputError, decode_video
from omni.streaming.engine import Image, VideoClip


def read_audio(path: str | Path) -> np.ndarray:
    """The file's first audio stream, float32 mono at 16 kHz."""
    return load_audio(path).numpy()


def read_image(path: str | Path) -> Image:
    """The first frame of an image file."""
    try:
        with av.open(str(path)) as container:
            frame = _first_picture(container)
    except (OSError, av.error.FFmpegError, StopIteration, ValueError) as e:
        raise VisionInputError(f"cannot decode image file {str(path)!r}: {e}") from e
    return Image(np.ascontiguousarray(frame.to_ndarray(format="rgb24")))


def _first_picture(container: av.container.InputContainer) -> av.VideoFrame:
    """The first frame of the container's first picture stream; ValueError if it has none (a sound file, say:
    av's own decode(video=0) fails there with an IndexError)."""
    if not container.streams.video:
        raise ValueError("it holds no picture")
    return next(container.decode(video=0))


def frame_to_rgb(image: av.VideoFrame, max_side: int) -> np.ndarray:
    """A decoded video frame -> RGB uint8 [H, W, 3], even sides, the longer at most `max_side`."""
    scale = min(1.0, max_side / max(image.width, image.height))
    w, h = max(2, int(image.width * scale) // 2 * 2), max(2, int(image.height * scale) // 2 * 2)
    return image.to_ndarray(format="rgb24", width=w, height=h)


def decode_data_url(url: str, max_side: int) -> np.ndarray:
    """A `data:image/...;base64,...` URL (a Realtime `input_image`) -> RGB uint8 [H, W, 3], the longer side at
    most `max_side`. Decoded by av (FFmpeg's image decoders: png, jpeg, webp, ...). ValueError if it is not one."""
    head, _, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not data:
        raise ValueError("the image must be a base64 data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data, validate=True)
        with av.open(io.BytesIO(raw), mode="r") as container:
            frame = _first_picture(container)
    except (binascii.Error, OSError, av.error.FFmpegError, StopIteration, ValueError) as e:
        raise ValueError(f"cannot decode the image: {e}") from None
    return frame_to_rgb(frame, max_side)


def read_video(path: str | Path, with_audio: bool = False) -> VideoClip:
    """Every frame of a video file at its own rate; its soundtrack too when `with_audio`."""
    frames, fps = decode_video(path)
    return VideoClip(frames, fps, read_audio(path) if with_audio else None)
