"""Vision preprocessing: resize rules, normalisation, patch layout, 2 fps sampling, bad inputs.

transformers' Qwen2-VL image/video processors need torchvision or PIL, neither of which is installed in
this environment, so parity is checked against the processor's rules as written (smart_resize examples
computed by hand, the patch layout by construction) rather than by running the processor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni.model.encoders.config import VisionEncoderConfig
from omni.model.encoders.vision_preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    VisionInputError,
    VisionPreprocessConfig,
    load_video,
    patchify,
    preprocess_image,
    preprocess_video,
    resize_and_normalize,
    sample_frame_indices,
    smart_resize,
)

ENC = VisionEncoderConfig.from_name("tiny")


@pytest.mark.parametrize(
    ("hw", "bounds", "expected"),
    [
        ((480, 640), (56 * 56, 16384 * 28 * 28), (476, 644)),  # round each side to 28
        ((10, 10), (56 * 56, 16384 * 28 * 28), (56, 56)),  # below min_pixels: scaled up
        ((4000, 3000), (128 * 28 * 28, 768 * 28 * 28), (896, 672)),  # above max: scaled down, floored
        ((28, 5600), (4 * 28 * 28, 16384 * 28 * 28), (28, 5600)),  # aspect 200 is still allowed
    ],
)
def test_smart_resize_rules(hw, bounds, expected) -> None:
    h, w = smart_resize(*hw, 28, *bounds)
    assert (h, w) == expected
    assert h % 28 == 0 and w % 28 == 0 and bounds[0] <= h * w <= bounds[1]


def test_image_smaller_than_one_token_is_rejected() -> None:
    with pytest.raises(VisionInputError, match="smaller than one 28x28 token"):
        smart_resize(10, 10, 28, 0, 16384 * 28 * 28)
    cfg = VisionPreprocessConfig(image_min_pixels=0)
    with pytest.raises(VisionInputError, match="smaller than one 28x28 token"):
        preprocess_image(np.zeros((12, 9, 3), np.uint8), ENC, cfg)
    with pytest.raises(VisionInputError, match="aspect ratio"):
        smart_resize(10, 2500, 28, 0, 10**9)
    with pytest.raises(VisionInputError, match="no pixels"):
        preprocess_image(np.zeros((0, 9, 3), np.uint8), ENC)


def test_normalisation_uses_clip_mean_std() -> None:
    img = np.full((56, 56, 3), 255, np.uint8)
    x = resize_and_normalize(img, (56, 56), VisionPreprocessConfig())
    expected = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 0, 0], expected)


def test_patch_layout_is_merge_block_order_with_channel_frame_row_col_inside() -> None:
    frames = torch.randn(2, 3, 56, 84)
    patches, grid = patchify(frames, ENC)
    assert grid == (1, 4, 6) and patches.shape == (24, 3 * 2 * 14 * 14)
    k = 0
    for bh in range(2):
        for bw in range(3):
            for ih in range(2):
                for iw in range(2):
                    y, x = (bh * 2 + ih) * 14, (bw * 2 + iw) * 14
                    crop = frames[:, :, y : y + 14, x : x + 14].permute(1, 0, 2, 3)  # C, frame, py, px
                    torch.testing.assert_close(patches[k].view(3, 2, 14, 14), crop, rtol=0, atol=0)
                    k += 1


def test_image_fills_both_frames_and_video_pads_odd_frames() -> None:
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    patches, grid = preprocess_image(img, ENC)
    assert grid == (1, 4, 6)  # 60x90 -> 56x84 (rounded to 28) -> 4x6 patches
    p = patches.view(-1, 3, 2, 14 * 14)
    torch.testing.assert_close(p[:, :, 0], p[:, :, 1])
    video = np.random.default_rng(1).integers(0, 256, (3, 3, 300, 400), dtype=np.uint8)
    vp, vgrid, spg = preprocess_video(video, ENC)
    assert vgrid[0] == 2 and spg == 1.0  # 3 frames -> 2 temporal patches, 2 frames / 2 fps
    assert vgrid[1] * vgrid[2] * 196 >= 128 * 28 * 28 * 0.99 / 4  # video min_pixels lifted the size


def test_two_fps_sampling() -> None:
    # 10 s at 30 fps -> 20 frames spread evenly; short clips keep min_frames; counts are even
    idx = sample_frame_indices(300, 30.0)
    assert len(idx) == 20 and idx[0] == 0 and idx[-1] == 299
    assert len(sample_frame_indices(30, 30.0)) == 4
    assert sample_frame_indices(1, 25.0) == [0, 0]
    with pytest.raises(VisionInputError, match="no frames"):
        sample_frame_indices(0, 30.0)


def test_video_without_frames_is_rejected() -> None:
    with pytest.raises(VisionInputError, match="no frames"):
        preprocess_video(np.zeros((0, 3, 56, 56), np.uint8), ENC)


def test_load_video_samples_at_2_fps(tmp_path) -> None:
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):  # 3 s at 10 fps
            img = np.full((48, 64, 3), i * 8, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    frames = load_video(path)
    assert frames.shape == (6, 3, 48, 64) and frames.dtype == torch.uint8
    assert int(frames[0].float().mean()) < int(frames[-1].float().mean())
