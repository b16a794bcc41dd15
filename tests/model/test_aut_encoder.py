"""AuT audio encoder (Qwen3-Omni): parity with transformers' Qwen3OmniMoeAudioEncoder, streaming equals
offline, final/provisional token bookkeeping, config round trip and load errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from omni.model.encoders.audio_frontend import AudioInputError
from omni.model.encoders.aut_encoder import AuTEncoder
from omni.model.encoders.config import AuTEncoderConfig, aut_token_count
from omni.model.encoders.weights import AUDIO_PREFIX, strip_prefix
from omni.model.errors import CheckpointError, ConfigError
from tests.model.encoder_reference import hf_aut_encoder, rel_err

# fp32, same op order except SDPA kernel tiling and batching: measured <= 5e-7 relative. 1e-4 (the
# issue's target) is far below what a wrong tail padding (3e-3), position table or window would give.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def pair() -> tuple[AuTEncoder, object]:
    cfg = AuTEncoderConfig.from_name("tiny")  # windows of 200 frames = 2 chunks = 26 tokens
    ref = hf_aut_encoder(cfg, seed=1)
    ours = AuTEncoder(cfg).eval()
    released = {AUDIO_PREFIX + k: v for k, v in ref.state_dict().items()}  # as in the checkpoint
    released["thinker.model.norm.weight"] = torch.ones(48)  # other parts of the checkpoint are ignored
    ours.load_weights(strip_prefix(released, AUDIO_PREFIX))
    return ours, ref


def _reference(ref, mel: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref(input_features=mel, feature_lens=torch.tensor([mel.shape[1]])).last_hidden_state


# below one chunk, odd, exactly one chunk / one window, a padded tail chunk, several windows plus a tail
@pytest.mark.parametrize("n_frames", [3, 57, 100, 137, 200, 457, 801])
def test_matches_transformers(pair, n_frames: int) -> None:
    ours, ref = pair
    torch.manual_seed(n_frames)
    mel = torch.randn(128, n_frames)
    expected = _reference(ref, mel)
    with torch.no_grad():
        got = ours(mel)
    assert got.shape == expected.shape == (aut_token_count(n_frames), 48)
    assert rel_err(got, expected) < REL_TOL


def test_token_counts_match_the_released_rule() -> None:
    # qwen_omni.md 2.2: 13 per full 1-s chunk; 3 s -> 39; tail by three stride-2 convs
    assert aut_token_count(300) == 39
    assert aut_token_count(100) == 13 and aut_token_count(1) == 1 and aut_token_count(57) == 8
    real = AuTEncoderConfig.from_name("qwen3-omni-30b-a3b")
    assert real.window_tokens == 104 and real.tokens_per_chunk == 13 and real.freq_after_stem == 16


def test_windows_do_not_see_each_other(pair) -> None:
    ours, _ = pair
    mel = torch.randn(128, 457)
    changed = mel.clone()
    changed[:, 250:] += 1.0  # only the second window (frames 200..399) and the tail change
    with torch.no_grad():
        a, b = ours(mel), ours(changed)
    torch.testing.assert_close(a[:26], b[:26], rtol=0, atol=0)
    assert (a[26:52] - b[26:52]).abs().max() > 1e-2


@pytest.mark.parametrize("chunk", [1, 37, 100, 200, 333])
def test_streaming_equals_offline(pair, chunk: int) -> None:
    ours, _ = pair
    mel = torch.randn(128, 457)  # 2 full windows + 57 frames
    with torch.no_grad():
        offline = ours(mel)
        state = ours.init_state()
        parts = [ours.step(state, mel[:, i : i + chunk]).final for i in range(0, mel.shape[1], chunk)]
        parts.append(ours.flush(state))
    got = torch.cat(parts)
    assert got.shape == offline.shape
    assert rel_err(got, offline) < 1e-6  # measured 0 (same kernels, one window per call either way)


def test_final_tokens_arrive_per_window_and_provisional_equals_flush(pair) -> None:
    ours, _ = pair
    state = ours.init_state()
    mel = torch.randn(128, 330)
    with torch.no_grad():
        out = ours.step(state, mel[:, :199], provisional=True)
        assert out.final.shape == (0, 48) and out.provisional is not None
        assert out.provisional.shape == (aut_token_count(199), 48)
        out = ours.step(state, mel[:, 199:200])
        assert out.final.shape == (26, 48) and out.provisional is None  # the 200th frame closes window 1
        assert ours.final_token_count(200) == 26
        out = ours.step(state, mel[:, 200:], provisional=True)
        assert out.final.shape == (0, 48)
        tail = ours.flush(state)
        torch.testing.assert_close(out.provisional, tail, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([ours(mel)[:26], tail]), ours(mel), rtol=0, atol=0)
    assert state.n_frames == 0  # flush reset the state for the next turn


def test_provisional_tokens_change_as_the_window_grows(pair) -> None:
    ours, _ = pair
    state = ours.init_state()
    mel = torch.randn(128, 150)
    with torch.no_grad():
        first = ours.step(state, mel[:, :100], provisional=True).provisional
        second = ours.step(state, mel[:, 100:], provisional=True).provisional
    assert first is not None and second is not None
    assert (first - second[:13]).abs().max() > 1e-3  # bidirectional attention: earlier tokens moved


def test_bad_input_is_rejected(pair) -> None:
    ours, _ = pair
    with pytest.raises(AudioInputError, match="128"):
        ours(torch.randn(80, 50))
    with pytest.raises(AudioInputError, match="zero-length"):
        ours(torch.randn(128, 0))
    with pytest.raises(AudioInputError, match="zero-length"):
        ours.flush(ours.init_state())


def test_config_round_trip_and_errors() -> None:
    cfg = AuTEncoderConfig.from_name("tiny")
    assert AuTEncoderConfig.from_hf_config({"thinker_config": {"audio_config": cfg.to_hf_config()}}) == cfg
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig

    hf = Qwen3OmniMoeAudioEncoderConfig(output_dim=2048).to_dict()  # transformers' defaults = released shape
    assert AuTEncoderConfig.from_hf_config(hf) == AuTEncoderConfig.from_name("qwen3-omni-30b-a3b")
    with pytest.raises(ConfigError, match="n_window_infer"):
        dataclasses.replace(cfg, n_window_infer=150)
    with pytest.raises(ConfigError, match="encoder_layers"):
        AuTEncoderConfig.from_hf_config({"d_model": 32})


def test_load_errors_name_the_keys(pair) -> None:
    ours, ref = pair
    sd = dict(ref.state_dict())
    fresh = AuTEncoder(ours.cfg)
    with pytest.raises(CheckpointError, match="conv_out.weight"):
        fresh.load_weights({k: v for k, v in sd.items() if k != "conv_out.weight"})
    with pytest.raises(CheckpointError, match="unexpected.*bogus"):
        fresh.load_weights({**sd, "bogus": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="proj2.weight"):
        fresh.load_weights({**sd, "proj2.weight": torch.zeros(7, 32)})


def test_real_shape_matches_the_released_tensor_list() -> None:
    with torch.device("meta"):
        model = AuTEncoder(AuTEncoderConfig.from_name("qwen3-omni-30b-a3b"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # shared/reference/qwen_omni.md 2.8
    assert shapes["conv2d1.weight"] == (480, 1, 3, 3) and shapes["conv_out.weight"] == (1280, 7680)
    assert shapes["proj2.weight"] == (2048, 1280) and shapes["layers.31.self_attn.k_proj.bias"] == (1280,)
    assert "layers.32.fc1.weight" not in shapes
