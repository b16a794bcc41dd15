"""Media files a user attaches to a typed turn (`omni chat --audio/--image/--video`), decoded for the engine
interface: audio as float32 mono at 16 kHz (the engines' input rate), images and video frames as RGB uint8.
Decoding errors are ValueErrors that name the file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from model.encoders.audio_frontend import load_audio
from model.encoders.vision_preprocess import VisionInputError, decode_video
from streaming.engine import Image, VideoClip


def read_audio(path: str | Path) -> np.ndarray:
    """The file's first audio stream, float32 mono at 16 kHz."""
    return load_audio(path).numpy()


def read_image(path: str | Path) -> Image:
    """The first frame of an image file."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (OSError, av.error.FFmpegError, StopIteration) as e:
        raise VisionInputError(f"cannot decode image file {str(path)!r}: {e}") from e
    return Image(np.ascontiguousarray(frame.to_ndarray(format="rgb24")))


def read_video(path: str | Path, with_audio: bool = False) -> VideoClip:
    """Every frame of a video file at its own rate; its soundtrack too when `with_audio`."""
    frames, fps = decode_video(path)
    return VideoClip(frames, fps, read_audio(path) if with_audio else None)
