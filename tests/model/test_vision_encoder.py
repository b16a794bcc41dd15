"""Vision encoder: parity with transformers' Qwen2_5OmniVisionEncoder, streaming equals offline, errors."""

from __future__ import annotations

import pytest
import torch

from omni.model.encoders.config import VisionEncoderConfig
from omni.model.encoders.vision_encoder import VisionEncoder
from omni.model.encoders.vision_preprocess import VisionInputError, patchify
from omni.model.errors import CheckpointError
from tests.model.encoder_reference import hf_vision_encoder, rel_err

# fp32; the reference permutes tokens into window order and attends per window, we gather padded
# windows with a key mask; attention is permutation-equivariant so only summation order differs
# (measured ~1.3e-6 relative). 1e-4 is the target; a wrong window, rotary axis or merge order
# moves outputs by >1e-1.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def pair() -> tuple[VisionEncoder, object]:
    cfg = VisionEncoderConfig.from_name("tiny")
    ref = hf_vision_encoder(cfg, seed=2)
    ours = VisionEncoder(cfg).eval()
    ours.load_weights(ref.state_dict())
    return ours, ref


# grids in 14-px patches: one window, exactly 2x2 windows, partial windows, several temporal patches
@pytest.mark.parametrize("grid", [(1, 4, 4), (1, 16, 16), (2, 12, 20), (3, 10, 6)])
def test_matches_transformers(pair, grid: tuple[int, int, int]) -> None:
    ours, ref = pair
    n = grid[0] * grid[1] * grid[2]
    patches = torch.randn(n, ours.cfg.patch_dim)
    with torch.no_grad():
        expected = ref(patches, grid_thw=torch.tensor([grid])).pooler_output
        got = ours(patches, [grid])
    assert got.shape == expected.shape == (n // 4, 40)
    assert rel_err(got, expected) < REL_TOL


def test_several_items_in_one_call(pair) -> None:
    ours, ref = pair
    grids = [(1, 6, 8), (2, 4, 10)]
    patches = torch.randn(sum(t * h * w for t, h, w in grids), ours.cfg.patch_dim)
    with torch.no_grad():
        expected = ref(patches, grid_thw=torch.tensor(grids)).pooler_output
        got = ours(patches, torch.tensor(grids))
    assert rel_err(got, expected) < REL_TOL


def test_streaming_equals_offline(pair) -> None:
    ours, _ = pair
    frames = torch.randn(5, 3, 84, 140)  # odd count: the last frame is repeated, as the processor pads
    with torch.no_grad():
        patches, grid = patchify(frames, ours.cfg)
        offline = ours.encode(patches, grid)
        state = ours.init_state(84, 140)
        sizes = [ours.step(state, f).shape[0] for f in frames]
        state2 = ours.init_state(84, 140)
        parts = [ours.step(state2, f) for f in frames] + [ours.flush(state2)]
    per_patch = (84 // 28) * (140 // 28)
    assert sizes == [0, per_patch, 0, per_patch, 0]  # a patch is encoded as its second frame arrives
    assert state2.n_patches == 3
    torch.testing.assert_close(torch.cat(parts), offline, atol=1e-5, rtol=1e-5)


def test_image_is_two_identical_frames(pair) -> None:
    ours, _ = pair
    image = torch.randn(3, 56, 84)
    with torch.no_grad():
        tokens = ours.encode_image(image)
        state = ours.init_state(56, 84)
        ours.step(state, image)
        streamed = ours.flush(state)
    assert tokens.shape == (6, 40)
    torch.testing.assert_close(streamed, tokens)


def test_bad_inputs(pair) -> None:
    ours, _ = pair
    with pytest.raises(VisionInputError, match="multiples of 28"):
        ours.init_state(50, 56)
    state = ours.init_state(56, 56)
    with pytest.raises(VisionInputError, match="this stream expects"):
        ours.step(state, torch.zeros(3, 56, 84))
    with pytest.raises(VisionInputError, match="expected patches"):
        ours.encode(torch.zeros(10, ours.cfg.patch_dim), (1, 4, 4))
    with pytest.raises(VisionInputError, match="covers 16 patches"):
        ours(torch.zeros(15, ours.cfg.patch_dim), [(1, 4, 4)])


def test_missing_weights_are_named(pair) -> None:
    _, ref = pair
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("merger.")}
    with pytest.raises(CheckpointError, match=r"vision encoder weights are incomplete.*merger\.ln_q\.weight"):
        VisionEncoder(VisionEncoderConfig.from_name("tiny")).load_weights(sd)


def test_config_from_released_layout() -> None:
    section = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584, "in_channels": 3}
    cfg = VisionEncoderConfig.from_hf_config({"thinker_config": {"vision_config": section}})
    assert cfg == VisionEncoderConfig.from_name("qwen2.5-omni-7b")
    assert VisionEncoderConfig.from_hf_config(cfg.to_hf_config()) == cfg
    assert (cfg.head_dim, cfg.window_tokens, cfg.patch_dim) == (80, 4, 1176)
