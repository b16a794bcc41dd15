"""Qwen3-Omni vision encoder: parity with transformers' Qwen3OmniMoeVisionEncoder (tokens and every
DeepStack feature), preprocessing parity with the Qwen2-VL image processor at Qwen3 settings, config and
load errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omni.model.encoders.config import Qwen3VisionConfig
from omni.model.encoders.qwen3_vision import Qwen3VisionEncoder
from omni.model.encoders.vision_preprocess import VisionInputError, VisionPreprocessConfig, patchify, preprocess_image
from omni.model.encoders.weights import VISION_PREFIX, strip_prefix
from omni.model.errors import CheckpointError, ConfigError
from tests.model.encoder_reference import hf_qwen3_vision_encoder, rel_err

# fp32: measured <= 1e-6 relative (SDPA tiling); 1e-4 is the target and far below a wrong
# interpolation (align_corners=False gives > 1e-2) or merge order.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def pair() -> tuple[Qwen3VisionEncoder, object]:
    cfg = Qwen3VisionConfig.from_name("tiny")
    ref = hf_qwen3_vision_encoder(cfg, seed=2)
    ours = Qwen3VisionEncoder(cfg).eval()
    released = {VISION_PREFIX + k: v for k, v in ref.state_dict().items()}  # as in the checkpoint
    ours.load_weights(strip_prefix(released, VISION_PREFIX))
    return ours, ref


# an image with odd merged-grid sizes (3 x 5 tokens), a 2-temporal-patch video (5 x 3), and both at once
@pytest.mark.parametrize("grids", [[[1, 6, 10]], [[2, 10, 6]], [[1, 6, 10], [2, 14, 2]]])
def test_matches_transformers(pair, grids) -> None:
    ours, ref = pair
    torch.manual_seed(len(grids))
    n = sum(t * h * w for t, h, w in grids)
    patches = torch.randn(n, ours.cfg.patch_dim)
    with torch.no_grad():
        expected = ref(patches, grid_thw=torch.tensor(grids))
        got = ours(patches, torch.tensor(grids))
    assert got.tokens.shape == expected.pooler_output.shape == (n // 4, 40)
    assert rel_err(got.tokens, expected.pooler_output) < REL_TOL
    assert len(got.deepstack) == len(expected.deepstack_features) == 2
    for ours_f, ref_f in zip(got.deepstack, expected.deepstack_features):
        assert ours_f.shape == ref_f.shape == (n // 4, 40)
        assert rel_err(ours_f, ref_f) < REL_TOL


def test_position_table_is_resized_with_align_corners(pair) -> None:
    ours, _ = pair
    side = ours.cfg.pos_grid_side
    table = ours.pos_embed.weight.detach().view(side, side, -1)
    pe = ours.position_embedding(6, 10).detach()  # merge-block order: patch 0 is (0, 0), patch 1 is (0, 1)
    torch.testing.assert_close(pe[0], table[0, 0])  # corners map onto corners exactly
    last = pe[-1]  # (5, 9), the bottom-right patch
    torch.testing.assert_close(last, table[-1, -1])
    unaligned = F.interpolate(table.permute(2, 0, 1)[None], size=(6, 10), mode="bilinear", align_corners=False)
    assert (unaligned[0, :, 0, 0] - table[0, 0]).abs().max() > 1e-2


def test_video_temporal_patches_are_independent(pair) -> None:
    ours, _ = pair
    patches = torch.randn(2 * 24, ours.cfg.patch_dim)
    with torch.no_grad():
        both = ours(patches, [[2, 4, 6]])
        first = ours(patches[:24], [[1, 4, 6]])
    torch.testing.assert_close(both.tokens[:6], first.tokens, rtol=1e-6, atol=1e-6)


def test_bad_input_is_rejected(pair) -> None:
    ours, _ = pair
    with pytest.raises(VisionInputError, match="grid"):
        ours(torch.randn(30, ours.cfg.patch_dim), [[1, 5, 6]])
    with pytest.raises(VisionInputError, match="covers"):
        ours(torch.randn(10, ours.cfg.patch_dim), [[1, 4, 4]])


def _hf_image_processor():
    # transformers' Qwen3-Omni processor uses Qwen2VLImageProcessor; torchvision is not installed here, so
    # the PIL backend is the reference. Its bicubic resize (PIL, a = -0.5) differs from the torchvision one
    # that ours follows, so pixel values are compared only where no resize happens.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


@pytest.mark.parametrize("hw", [(64, 96), (96, 160)])
def test_preprocessing_matches_the_processor(hw) -> None:
    enc = Qwen3VisionConfig.from_name("tiny")
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected = _hf_image_processor()(images=[img], return_tensors="pt")
    patches, grid = preprocess_image(img, enc, VisionPreprocessConfig.qwen3())
    assert [list(grid)] == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(patches, expected["pixel_values"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(75, 131), (300, 200), (40, 40), (1200, 1000)])
def test_resize_rule_matches_the_processor(hw) -> None:
    enc = Qwen3VisionConfig.from_name("tiny")
    img = np.zeros((*hw, 3), dtype=np.uint8)
    expected = _hf_image_processor()(images=[img], return_tensors="pt")
    patches, grid = preprocess_image(img, enc, VisionPreprocessConfig.qwen3())
    assert [list(grid)] == expected["image_grid_thw"].tolist()
    assert patches.shape == expected["pixel_values"].shape


def test_config_round_trip_and_errors() -> None:
    cfg = Qwen3VisionConfig.from_name("tiny")
    assert Qwen3VisionConfig.from_hf_config({"thinker_config": {"vision_config": cfg.to_hf_config()}}) == cfg
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig

    hf = Qwen3OmniMoeVisionEncoderConfig(out_hidden_size=2048).to_dict()  # defaults = the released shape
    assert Qwen3VisionConfig.from_hf_config(hf) == Qwen3VisionConfig.from_name("qwen3-omni-30b-a3b")
    with pytest.raises(ConfigError, match="perfect square"):
        Qwen3VisionConfig(num_position_embeddings=60)
    with pytest.raises(ConfigError, match="deepstack"):
        Qwen3VisionConfig(depth=3, deepstack_visual_indexes=(5,))


def test_load_errors_name_the_keys(pair) -> None:
    ours, ref = pair
    sd = dict(ref.state_dict())
    fresh = Qwen3VisionEncoder(ours.cfg)
    with pytest.raises(CheckpointError, match="merger_list.1.ln_q.weight"):
        fresh.load_weights({k: v for k, v in sd.items() if k != "merger_list.1.ln_q.weight"})
    with pytest.raises(CheckpointError, match="pos_embed.weight"):
        fresh.load_weights({**sd, "pos_embed.weight": torch.zeros(49, 32)})


def test_real_shape_matches_the_released_tensor_list() -> None:
    with torch.device("meta"):
        model = Qwen3VisionEncoder(Qwen3VisionConfig.from_name("qwen3-omni-30b-a3b"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # shared/reference/qwen_omni.md 2.8
    assert shapes["pos_embed.weight"] == (2304, 1152) and shapes["blocks.26.attn.qkv.weight"] == (3456, 1152)
    assert shapes["blocks.0.mlp.linear_fc1.weight"] == (4304, 1152) and shapes["patch_embed.proj.bias"] == (1152,)
    assert shapes["merger.mlp.2.weight"] == (2048, 4608) and shapes["merger.ln_q.weight"] == (1152,)
    assert shapes["merger_list.2.ln_q.weight"] == (4608,) and "merger_list.3.ln_q.weight" not in shapes


def test_streaming_frames_equal_offline_video(pair) -> None:
    ours, _ = pair
    frames = torch.randn(3, 3, 64, 96)  # odd frame count: the last temporal patch repeats its frame
    patches, grid = patchify(frames, ours.cfg)
    with torch.no_grad():
        offline = ours.encode(patches, grid)
        state = ours.init_state(64, 96)
        outs = [ours.step(state, f) for f in frames] + [ours.flush(state)]
    assert outs[0] is None and outs[2] is None and state.n_patches == 2
    got = [o for o in outs if o is not None]
    torch.testing.assert_close(torch.cat([o.tokens for o in got]), offline.tokens, rtol=1e-6, atol=1e-6)
    for i in range(2):
        torch.testing.assert_close(torch.cat([o.deepstack[i] for o in got]), offline.deepstack[i], rtol=1e-6, atol=1e-6)
    with pytest.raises(VisionInputError, match="multiples of 32"):
        ours.init_state(60, 96)
    with pytest.raises(VisionInputError, match="expects"):
        ours.step(ours.init_state(64, 96), torch.randn(3, 32, 32))
