"""Frame preprocessing for the vision encoders: resize to multiples of one token's side inside pixel bounds,
normalise, sample video at 2 fps, cut frames into the encoder's flattened 2 x patch x patch patches.
Sizes come from the encoder config (Qwen2.5-Omni: 14-px patches, 28-px tokens; Qwen3-Omni: 16-px patches,
32-px tokens, mean/std 0.5 via `VisionPreprocessConfig.qwen3()`); the rules are the same.

Facts (shared/reference/qwen_omni.md section 1.3; transformers' Qwen2-VL image/video processors and
qwen-omni-utils): a side must be a multiple of 28 px (one LLM token = 2x2 patches of 14 px); images keep
56*56..16384*28*28 px, video frames 128*28*28..768*28*28 px; bicubic resize with antialiasing; CLIP
mean/std after scaling to [0, 1]; video sampled at 2 fps so one temporal patch (2 frames) is 1 s; an
image is two identical frames. Patches are laid out in 2x2 merge-block order, each flattened as
(channel, frame, row, col) to match the Conv3d patch embedding's weight layout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omni.model.encoders.config import Qwen3VisionConfig, VisionEncoderConfig

# The encoders whose patch layout this module produces (sizes come from the config: 14 or 16 px patches).
AnyVisionConfig = VisionEncoderConfig | Qwen3VisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QWEN3_MEAN = (0.5, 0.5, 0.5)  # Qwen3-VL / Qwen3-Omni: pixels mapped to [-1, 1]
QWEN3_STD = (0.5, 0.5, 0.5)
MAX_ASPECT_RATIO = 200


class VisionInputError(ValueError):
    """An image or video that cannot be turned into encoder input, with what was expected."""


@dataclass
class VisionPreprocessConfig:
    """Pixel bounds, sampling rate and normalisation (the checkpoint's preprocessor_config.json)."""

    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 16384 * 28 * 28
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def qwen3(cls) -> VisionPreprocessConfig:
        """Qwen3-Omni: 32-px tokens, mean/std 0.5. Image bounds are transformers' Qwen2VLImageProcessor
        defaults (56*56 .. 1280*28*28 px; the Qwen3-Omni processor does not override them), video frames
        128..768 tokens of 32x32 px (the processor's video size)."""
        return cls(
            image_min_pixels=56 * 56,
            image_max_pixels=1280 * 28 * 28,
            video_min_pixels=128 * 32 * 32,
            video_max_pixels=768 * 32 * 32,
            mean=QWEN3_MEAN,
            std=QWEN3_STD,
        )

    @classmethod
    def from_preprocessor_config(
        cls, cfg: dict[str, Any], defaults: VisionPreprocessConfig | None = None
    ) -> VisionPreprocessConfig:
        """Read the image-processor fields of preprocessor_config.json (min/max_pixels, image_mean/std) over
        `defaults` (Qwen2.5-Omni's when not given; pass `VisionPreprocessConfig.qwen3()` for Qwen3-Omni)."""
        base = defaults or cls()
        size = cfg.get("size") or {}
        return dataclasses.replace(
            base,
            image_min_pixels=int(cfg.get("min_pixels", size.get("shortest_edge", base.image_min_pixels))),
            image_max_pixels=int(cfg.get("max_pixels", size.get("longest_edge", base.image_max_pixels))),
            mean=tuple(cfg.get("image_mean", base.mean)),
            std=tuple(cfg.get("image_std", base.std)),
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept
    as closely as rounding allows (the Qwen2-VL rule)."""
    if height <= 0 or width <= 0:
        raise VisionInputError(f"image has no pixels: {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VisionInputError(
            f"aspect ratio {max(height, width) / min(height, width):.0f} of a {height}x{width} image exceeds "
            f"{MAX_ASPECT_RATIO}"
        )
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h < factor or w < factor:
        raise VisionInputError(
            f"a {height}x{width} image resizes to {h}x{w} px, smaller than one {factor}x{factor} token; "
            f"expected at least {factor} px per side after resizing (raise min_pixels, now {min_pixels})"
        )
    return h, w


def _as_frames(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[H, W, 3] / [3, H, W] / [T, H, W, 3] / [T, 3, H, W] uint8 or float (0..255) -> [T, 3, H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise VisionInputError(f"expected an image [H, W, 3] / [3, H, W] or frames [T, ...], got {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise VisionInputError(f"expected 3 colour channels (RGB), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise VisionInputError("a video with no frames: expected at least one frame")
    return t


def resize_and_normalize(
    frames: np.ndarray | torch.Tensor, size: tuple[int, int], cfg: VisionPreprocessConfig
) -> torch.Tensor:
    """Bicubic, antialiased resize to `size` then CLIP normalisation: -> float32 [T, 3, h, w].

    uint8 input is rounded back to uint8 after resizing (what torchvision does for uint8 tensors), so the
    normalised values sit on the same 1/255 grid as the reference processor's.
    """
    x = _as_frames(frames)
    was_uint8 = x.dtype == torch.uint8
    x = x.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if was_uint8:
            x = x.round_().clamp_(0, 255)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def patchify(frames: torch.Tensor, enc: AnyVisionConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised frames [T, C, H, W] -> patches [t * gh * gw, C * 2 * 14 * 14] and grid (t, gh, gw).

    An odd last frame is repeated (as the reference processor pads video to whole temporal patches).
    Within a temporal patch, patches go in 2x2 merge-block order: block row, block col, row, col.
    """
    n, c, h, w = frames.shape
    tp, p, m = enc.temporal_patch_size, enc.patch_size, enc.spatial_merge_size
    if h % enc.image_factor or w % enc.image_factor:
        raise VisionInputError(f"frame {h}x{w} is not a multiple of {enc.image_factor} px: resize it first")
    if n % tp:
        frames = torch.cat([frames, frames[-1:].expand(tp - n % tp, -1, -1, -1)])
    t, gh, gw = frames.shape[0] // tp, h // p, w // p
    x = frames.reshape(t, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, block row, block col, row, col, C, frame, py, px
    return x.reshape(t * gh * gw, c * tp * p * p), (t, gh, gw)


def preprocess_image(
    image: np.ndarray | torch.Tensor, enc: AnyVisionConfig, cfg: VisionPreprocessConfig | None = None
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """An RGB image ([H, W, 3] or [3, H, W], 0..255) -> (patches, grid (1, gh, gw)); the image fills both
    frames of its single temporal patch."""
    cfg = cfg or VisionPreprocessConfig()
    x = _as_frames(image)
    if x.shape[0] != 1:
        raise VisionInputError(f"expected one image, got {x.shape[0]} frames (use preprocess_video)")
    size = smart_resize(x.shape[-2], x.shape[-1], enc.image_factor, cfg.image_min_pixels, cfg.image_max_pixels)
    frame = resize_and_normalize(x, size, cfg)
    return patchify(frame.expand(enc.temporal_patch_size, -1, -1, -1), enc)


def checked_image_input(
    image: torch.Tensor, enc: AnyVisionConfig, cfg: VisionPreprocessConfig | None = None
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`preprocess_image` for a Thinker's input: refuses an image smaller than one patch per side (14 px for
    Qwen2.5, 16 for Qwen3), as upscaling it would invent every pixel the encoder sees."""
    h, w = (image.shape[0], image.shape[1]) if image.shape[-1] == 3 else (image.shape[-2], image.shape[-1])
    p = enc.patch_size
    if h < p or w < p:
        raise VisionInputError(f"image of {h}x{w} px is smaller than one {p}x{p} patch; expected >= {p} px a side")
    return preprocess_image(image, enc, cfg)


def video_frame_size(height: int, width: int, enc: AnyVisionConfig, cfg: VisionPreprocessConfig) -> tuple[int, int]:
    """Resized frame size of a video (per-frame bounds 128..768 tokens of 28x28 px)."""
    return smart_resize(height, width, enc.image_factor, cfg.video_min_pixels, cfg.video_max_pixels)


def preprocess_video(
    frames: np.ndarray | torch.Tensor, enc: AnyVisionConfig, cfg: VisionPreprocessConfig | None = None
) -> tuple[torch.Tensor, tuple[int, int, int], float]:
    """Frames already sampled at `cfg.fps` ([T, H, W, 3] or [T, 3, H, W]) -> (patches, grid,
    seconds_per_grid). seconds_per_grid = 2 frames / 2 fps = 1.0 s: TMRoPE advances 25 ids per patch."""
    cfg = cfg or VisionPreprocessConfig()
    x = _as_frames(frames)
    size = video_frame_size(x.shape[-2], x.shape[-1], enc, cfg)
    patches, grid = patchify(resize_and_normalize(x, size, cfg), enc)
    return patches, grid, enc.temporal_patch_size / cfg.fps


def sample_frame_indices(n_frames: int, native_fps: float, cfg: VisionPreprocessConfig | None = None) -> list[int]:
    """Which decoded frames to keep for `cfg.fps` sampling (qwen-omni-utils' rule): round(duration * fps)
    frames, an even count within [min_frames, max_frames], spread evenly over the clip."""
    cfg = cfg or VisionPreprocessConfig()
    if n_frames <= 0:
        raise VisionInputError("a video with no frames: expected at least one decoded frame")
    if native_fps <= 0:
        raise VisionInputError(f"video frame rate must be positive, got {native_fps}")
    factor = 2  # whole temporal patches
    lo = math.ceil(cfg.min_frames / factor) * factor
    hi = math.floor(min(cfg.max_frames, n_frames) / factor) * factor
    wanted = n_frames / native_fps * cfg.fps
    count = math.floor(min(max(wanted, lo), hi, n_frames) / factor) * factor
    count = max(count, factor)  # a 1-frame clip: that frame fills one temporal patch
    return torch.linspace(0, n_frames - 1, count).round().long().tolist()


def decode_video(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a video file's first video stream as RGB uint8 [H, W, 3], and its frame rate."""
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as e:
        raise VisionInputError(f"cannot open video file {str(path)!r}: {e}") from e
    with container:
        if not container.streams.video:
            raise VisionInputError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
    if not frames:
        raise VisionInputError(f"a video with no frames: {str(path)!r} decodes to nothing")
    return frames, rate


def sample_video(frames: list[np.ndarray], rate: float, cfg: VisionPreprocessConfig | None = None) -> torch.Tensor:
    """Decoded frames at `rate` -> the ones kept for `cfg.fps` sampling as uint8 [T, 3, H, W] (T even)."""
    keep = sample_frame_indices(len(frames), rate, cfg)
    return torch.from_numpy(np.stack([frames[i] for i in keep])).permute(0, 3, 1, 2).contiguous()


def load_video(path: str | Path, cfg: VisionPreprocessConfig | None = None) -> torch.Tensor:
    """Decode a video file with av and keep frames at `cfg.fps`: -> uint8 [T, 3, H, W] (T even)."""
    return sample_video(*decode_video(path), cfg)
