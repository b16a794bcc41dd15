"""token2wav parity with transformers' Qwen2_5OmniToken2WavModel (tiny random weights, same injected noise):
DiT velocity field, full ODE sample (RK4, CFG, sway), BigVGAN waveform, and the whole offline decode.

Checkpoint path: the reference is saved with save_pretrained and loaded by our loader. float64 comparisons
use 1e-9 (rounding only); float32 ones are bounded by accumulated float32 rounding through the stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from omni.model.loaders.talker_weights import SpeechModels, load_speech
from tests.model.encoder_reference import rel_err
from tests.model.tiny_speech import hf_talker, hf_token2wav, tiny_voices, write_speech_checkpoint

N_CODES = 40  # 80 mel frames: 4 attention blocks of 24 (the last partial), so block masks matter


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SpeechModels]:
    ref = hf_token2wav(seed=1)
    d = write_speech_checkpoint(tmp_path_factory.mktemp("t2w"), hf_talker(), ref, tiny_voices())
    return ref, load_speech(d)


def _inputs(dtype: torch.dtype, n: int = N_CODES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 64, (1, n), generator=gen)
    cond = torch.randn(1, 16, generator=gen, dtype=dtype)
    ref_mel = torch.randn(1, 50, 80, generator=gen, dtype=dtype) - 3.0
    return codes, cond, ref_mel


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_dit_velocity(models: tuple[Any, SpeechModels], dtype: torch.dtype, tol: float) -> None:
    ref, ours = models
    ref_dit = ref.code2wav_dit_model.to(dtype)
    dit = ours.token2wav.dit.to(dtype)
    codes, cond, ref_mel = _inputs(dtype)
    T = N_CODES * 2
    x = torch.randn(1, T, 80, dtype=dtype, generator=torch.Generator().manual_seed(4))
    for t in (0.0, 0.37, 0.93):
        tt = torch.tensor(t, dtype=dtype)
        with torch.no_grad():
            want = ref_dit(
                hidden_states=x,
                condition_vector=ref_mel,
                speaker_embedding=cond[:, None].expand(1, T, 16),
                quantized_code=codes,
                time_step=tt,
                apply_cfg=True,
            )
            got = dit(torch.cat([x, x]), tt.reshape(1).expand(2), dit.condition(codes, dit.speaker_rows(cond, ref_mel)))
        assert want.abs().mean() > 0.1
        assert rel_err(got, want) < tol, (t, rel_err(got, want))
    ref_dit.float()
    dit.float()


def test_block_attention_reach(models: tuple[Any, SpeechModels]) -> None:
    """Perturbing block 3 changes frames of blocks 1..3 and leaves block 0 (two back) and 4+ untouched...

    ... in one velocity evaluation: reach is 2 blocks back and 1 ahead (layers 0,3 back; layer 2 ahead).
    """
    _, ours = models
    dit = ours.token2wav.dit.double()
    codes, cond, ref_mel = _inputs(torch.float64, 60)  # 120 frames = 5 blocks
    x = torch.randn(1, 120, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    c = dit.condition(codes, dit.speaker_rows(cond, ref_mel))
    t = torch.full((2,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        a = dit(torch.cat([x, x]), t, c)
        x2 = x.clone()
        x2[:, 72:96] += 1.0  # block 3
        b = dit(torch.cat([x2, x2]), t, c)
    changed = (a - b).abs().amax(dim=(0, 2)).view(5, 24).amax(dim=1)
    dit.float()
    assert changed[0] == 0 and changed[1] == 0, changed  # block 3 is 3 / 2 blocks ahead of blocks 0 / 1 ...
    assert (changed[2:] > 0).all(), changed  # ... block 2 sees it through layer 2 (one ahead); 4 looks back


def test_full_sample_and_waveform(models: tuple[Any, SpeechModels]) -> None:
    ref, ours = models
    ref.double()
    t2w = ours.token2wav.double()
    voice = tiny_voices().get("Chelsie")
    codes, _, _ = _inputs(torch.float64)
    cond, ref_mel = voice.cond.double(), voice.ref_mel.double()
    torch.manual_seed(11)
    with torch.no_grad():  # what the reference's forward does: sample (drawing randn(1, 80, 80)), BigVGAN
        want_mel = ref.code2wav_dit_model.sample(cond, ref_mel, codes)
        want_wav = ref.code2wav_bigvgan_model(want_mel)
    torch.manual_seed(11)
    noise = torch.randn(1, N_CODES * 2, 80, dtype=torch.float64)
    mel = t2w.sample_mel(codes, cond, ref_mel, noise)
    wav = t2w.vocode(mel)
    ref.float()
    t2w.float()
    assert rel_err(mel.transpose(1, 2), want_mel) < 1e-9
    assert wav.shape == (1, N_CODES * 480)
    clipped = (want_wav.abs() >= 1).float().mean()
    assert 0.01 < float(want_wav.abs().mean()) and clipped < 0.05, (float(want_wav.abs().mean()), float(clipped))
    assert rel_err(wav[0], want_wav) < 1e-9


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_bigvgan(models: tuple[Any, SpeechModels], dtype: torch.dtype, tol: float) -> None:
    ref, ours = models
    vocoder = ref.code2wav_bigvgan_model.to(dtype)
    mine = ours.token2wav.bigvgan.to(dtype)
    mel = torch.randn(1, 80, 30, dtype=dtype, generator=torch.Generator().manual_seed(6)) * 2 - 5
    with torch.no_grad():
        want = vocoder(mel)
        got = mine(mel)[0]
    vocoder.float()
    mine.float()
    assert got.shape == (30 * 240,)
    assert float(want.abs().mean()) > 0.01 and float((want.abs() >= 1).float().mean()) < 0.05
    assert rel_err(got, want) < tol


def test_loader_reports_missing_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from omni.model.errors import CheckpointError

    d = write_speech_checkpoint(tmp_path, hf_talker(), hf_token2wav(), tiny_voices())
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["token2wav.code2wav_dit_model.proj_out.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="proj_out.weight"):
        load_speech(d)


def test_configs_read_the_released_layouts() -> None:
    from omni.model.token2wav import BigVGANConfig, DiTConfig, Token2WavConfig
    from omni.model.token2wav.ecapa import ECAPAConfig

    old_style = {
        "dim": 1024,
        "depth": 22,
        "heads": 16,
        "head_dim": 64,
        "ff_mult": 2,
        "emb_dim": 512,
        "repeats": 2,
        "num_embeds": 8193,
        "mel_dim": 80,
        "block_size": 24,
        "look_ahead_layers": [10],
        "look_backward_layers": [0, 20],
        "enc_emb_dim": 192,
        "enc_dim": 128,
    }
    assert DiTConfig.from_hf_config(old_style) == DiTConfig()
    cfg = Token2WavConfig()
    assert Token2WavConfig.from_hf_config({"token2wav_config": cfg.to_hf_config()}) == cfg
    assert cfg.samples_per_code == 480 and BigVGANConfig().hop == 240
    with pytest.raises(ValueError, match="enc_channels"):
        ECAPAConfig(channels=(32, 32, 32, 32, 64))
    with pytest.raises(ValueError, match="enc_channels"):
        DiTConfig.from_hf_config({"enc_channels": [32, 32, 32, 32, 64]})


def test_sample_without_guidance_and_euler(models: tuple[Any, SpeechModels]) -> None:
    """guidance 0 runs the conditional row alone (as the reference); Euler is the documented cheaper solver."""
    from omni.model.token2wav import SolverConfig

    ref, ours = models
    ref.double()
    t2w = ours.token2wav.double()
    codes, cond, ref_mel = _inputs(torch.float64, 24)
    torch.manual_seed(12)
    with torch.no_grad():
        want = ref.code2wav_dit_model.sample(cond, ref_mel, codes, guidance_scale=0.0)
    torch.manual_seed(12)
    noise = torch.randn(1, 48, 80, dtype=torch.float64)
    got = t2w.sample_mel(codes, cond, ref_mel, noise, SolverConfig(guidance_scale=0.0))
    euler = t2w.sample_mel(codes, cond, ref_mel, noise, SolverConfig(method="euler"))
    ref.float()
    t2w.float()
    assert rel_err(got.transpose(1, 2), want) < 1e-9
    assert SolverConfig(method="euler").evaluations == 9 and SolverConfig().evaluations == 36
    assert euler.shape == got.shape and not torch.allclose(euler, got)
