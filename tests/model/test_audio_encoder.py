"""Audio encoder: parity with transformers' Qwen2_5OmniAudioEncoder, streaming equals offline, errors."""

from __future__ import annotations

import pytest
import torch

from omni.model.encoders.audio_encoder import AudioEncoder
from omni.model.encoders.audio_frontend import AudioInputError
from omni.model.encoders.config import AudioEncoderConfig, audio_token_count
from omni.model.errors import CheckpointError
from tests.model.encoder_reference import hf_audio_encoder, rel_err

# fp32, same op order except SDPA kernel tiling and per-block vs padded batching: measured <= 4e-7 relative.
# 1e-4 (the target) is two orders above that noise and far below what a wrong mask, position
# table or pooling pair would give (>1e-1).
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def pair() -> tuple[AudioEncoder, object]:
    cfg = AudioEncoderConfig.from_name("tiny")
    ref = hf_audio_encoder(cfg, seed=1)
    ours = AudioEncoder(cfg).eval()
    ours.load_weights(ref.state_dict())
    return ours, ref


# lengths in mel frames: below one block, odd, exactly 1 / 2 blocks, and several blocks plus a tail
@pytest.mark.parametrize("n_frames", [3, 137, 200, 201, 457, 400])
def test_matches_transformers(pair, n_frames: int) -> None:
    ours, ref = pair
    mel = torch.randn(128, n_frames)
    with torch.no_grad():
        expected = ref(input_features=mel, feature_lens=torch.tensor([n_frames])).last_hidden_state
        got = ours(mel)
    assert got.shape == expected.shape == (audio_token_count(n_frames), 48)
    assert rel_err(got, expected) < REL_TOL


@pytest.mark.parametrize("chunk", [1, 10, 37, 200, 250])
def test_streaming_equals_offline(pair, chunk: int) -> None:
    ours, _ = pair
    mel = torch.randn(128, 457)  # 2 full blocks + 57 frames: not a multiple of 2 s
    with torch.no_grad():
        offline = ours(mel)
        state = ours.init_state()
        parts = [ours.step(state, mel[:, i : i + chunk]) for i in range(0, mel.shape[1], chunk)]
        parts.append(ours.flush(state))
    torch.testing.assert_close(torch.cat(parts), offline, atol=1e-6, rtol=1e-5)


def test_each_block_is_emitted_when_it_completes(pair) -> None:
    ours, _ = pair
    state = ours.init_state()
    with torch.no_grad():
        assert ours.step(state, torch.randn(128, 199)).shape == (0, 48)
        assert ours.step(state, torch.randn(128, 1)).shape == (50, 48)  # the 200th frame completes 2 s
        assert ours.step(state, torch.randn(128, 450)).shape == (100, 48)
        assert ours.flush(state).shape == (audio_token_count(50), 48)
        # the state is reset for the next turn
        assert state.n_pending == 0 and state.n_blocks == 0
        assert ours.step(state, torch.randn(128, 200)).shape == (50, 48)


def test_token_counts_match_the_processor_formula() -> None:
    # Qwen2.5-Omni processor: ((L - 1) // 2 + 1 - 2) // 2 + 1; 3 s = 300 frames -> 75 tokens
    assert audio_token_count(300) == 75
    assert audio_token_count(200) == AudioEncoderConfig().tokens_per_block == 50
    assert audio_token_count(2) == 0


def test_zero_length_and_bad_shapes(pair) -> None:
    ours, _ = pair
    with pytest.raises(AudioInputError, match="zero-length"):
        ours(torch.zeros(128, 0))
    with pytest.raises(AudioInputError, match=r"\[128, frames\]"):
        ours(torch.zeros(80, 10))
    with pytest.raises(AudioInputError, match="zero-length"):
        ours.flush(ours.init_state())


def test_missing_weights_are_named(pair) -> None:
    _, ref = pair
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("layers.1.")}
    fresh = AudioEncoder(AudioEncoderConfig.from_name("tiny"))
    with pytest.raises(CheckpointError, match=r"audio encoder weights are incomplete.*layers\.1\."):
        fresh.load_weights(sd)
    sd = dict(ref.state_dict())
    sd["proj.weight"] = sd["proj.weight"][:, :-1]
    with pytest.raises(CheckpointError, match=r"proj\.weight.*expected \(48, 32\)"):
        fresh.load_weights(sd)


def test_config_round_trip_and_presets() -> None:
    real = {"thinker_config": {"audio_config": {
        "model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32, "d_model": 1280,
        "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "n_window": 100, "output_dim": 2048,
        "max_source_positions": 1500}}}
    cfg = AudioEncoderConfig.from_hf_config(real)
    assert cfg == AudioEncoderConfig.from_name("qwen2.5-omni-3b")
    assert AudioEncoderConfig.from_hf_config(cfg.to_hf_config()) == cfg
    assert AudioEncoderConfig.from_name("qwen2.5-omni-7b").output_dim == 3584
