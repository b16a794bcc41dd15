"""Whole attachments into an omni conversation: an image, or a video clip sampled at the checkpoint's 2 fps (with its
soundtrack interleaved as the family's TMRoPE lays out a video with audio), with either family's vision settings."""

from __future__ import annotations

import numpy as np
import torch

from omni.model.encoders.vision_preprocess import AnyVisionConfig, resize_and_normalize, sample_video, video_frame_size
from omni.model.qwen3.loader import LoadedQwen3
from omni.streaming.engine import INPUT_SAMPLE_RATE, Image, VideoClip
from omni.streaming.engines.omni_models import Loaded
from omni.streaming.engines.omni_sessions import OmniSession


def vision_config(thinker: Loaded) -> AnyVisionConfig:
    """The vision encoder's config (what video_frame_size takes) of either family."""
    return thinker.model.vision_cfg if isinstance(thinker, LoadedQwen3) else thinker.model.cfg.vision


def feed_image(s: OmniSession, thinker: Loaded, image: Image) -> str:
    """Prefill `image` into the open user turn; its line in the history."""
    patches, grid = thinker.model.image_input(torch.from_numpy(np.ascontiguousarray(image.rgb)),
                                              thinker.vision_preprocess)
    s.add_image(patches, grid)
    return "[image]"


def feed_clip(s: OmniSession, thinker: Loaded, clip: VideoClip) -> str:
    """Prefill `clip` (with its audio, when it has one) into the open user turn; its line in the history."""
    pre = thinker.vision_preprocess
    raw = sample_video(clip.frames, clip.fps, pre)
    enc = vision_config(thinker)
    size = video_frame_size(raw.shape[-2], raw.shape[-1], enc, pre)
    frames = resize_and_normalize(raw, size, pre)
    spg = enc.temporal_patch_size / pre.fps
    if clip.audio is not None:
        s.begin_av(size[0], size[1], spg)
        s.push_av_audio_features(thinker.model.audio_features(torch.from_numpy(clip.audio), INPUT_SAMPLE_RATE))
        for f in frames:
            s.push_av_frame(f)
        s.end_av()
    else:
        s.begin_video(size[0], size[1], spg)
        for f in frames:
            s.push_video_frame(f)
        s.end_video()
    return f"[video {len(frames)} frames{', with audio' if clip.audio is not None else ''}]"
