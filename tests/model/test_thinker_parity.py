"""Thinker parity with transformers' Qwen2.5-Omni on a tiny random checkpoint in the released layout, live
(incremental) prefill equal to the offline prompt, loading variants and bad inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni.model.encoders.audio_frontend import AudioInputError
from omni.model.encoders.vision_preprocess import VisionInputError, patchify
from omni.model.errors import CheckpointError
from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.thinker import VideoInput
from omni.model.thinker_session import ThinkerSession
from tests.model.encoder_reference import rel_err
from tests.model.omni_tiny import save_tiny_omni

# fp32 throughout. Our decoder fuses q/k/v and gate/up and gathers vision windows differently, so only the
# float summation order differs from the reference: measured rel. error ~1e-6. 1e-4 is the target; a
# wrong position id, placeholder order or missing weight moves logits by > 1e-1.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, LoadedThinker, Path]:
    ref, path = save_tiny_omni(tmp_path_factory.mktemp("omni") / "tiny")
    return ref, load_thinker(path), path


def mel_of(loaded: LoadedThinker, seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return loaded.model.audio_features(0.1 * torch.randn(int(16000 * seconds), generator=g), 16000)


def frames_of(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def user_prompt(loaded: LoadedThinker, media: list[int], text: str = "hi") -> list[int]:
    p = loaded.prompt
    return p.system_turn() + p.turn_start("user") + media + p.text(text) + p.generation_prompt()


def reference_logits(ref: Any, ids: list[int], **kw: Any) -> torch.Tensor:
    t = torch.tensor([ids])
    if "input_features" in kw:
        mels = kw.pop("input_features")
        width = max(m.shape[1] for m in mels)
        kw["input_features"] = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in mels])
        kw["feature_attention_mask"] = torch.stack([torch.arange(width) < m.shape[1] for m in mels]).long()
    with torch.no_grad():
        return ref.thinker(input_ids=t, attention_mask=torch.ones_like(t), **kw).logits[0]


def test_text_only(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    ids = user_prompt(loaded, [], "What is the capital of France?")
    expected = reference_logits(ref, ids)
    got = loaded.model.prompt_logits(torch.tensor(ids))
    assert expected.abs().max() > 1.0  # re-initialised weights: logits far from zero
    assert rel_err(got, expected) < REL_TOL


def test_text_and_audio(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    mels = [mel_of(loaded, 3.3, 1), mel_of(loaded, 0.7, 2)]  # lengths not multiples of 2 s
    feats = [loaded.model.encode_audio(m) for m in mels]
    with torch.no_grad():
        expected_feats = [
            ref.thinker.get_audio_features(m[None], torch.ones(1, m.shape[1]).long()).last_hidden_state for m in mels
        ]
    for f, e in zip(feats, expected_feats):
        assert f.shape == e.shape and rel_err(f, e) < REL_TOL
    p = loaded.prompt
    ids = user_prompt(loaded, p.audio(feats[0].shape[0]) + p.text("and") + p.audio(feats[1].shape[0]))
    expected = reference_logits(ref, ids, input_features=mels)
    assert rel_err(loaded.model.prompt_logits(torch.tensor(ids), audio_mels=mels), expected) < REL_TOL


def test_text_and_image(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    image = torch.randint(0, 256, (70, 100, 3), dtype=torch.uint8)
    patches, grid = loaded.model.image_input(image)
    with torch.no_grad():
        expected_feats = ref.thinker.get_image_features(patches, torch.tensor([grid])).pooler_output[0]
    assert rel_err(loaded.model.encode_vision(patches, grid), expected_feats) < REL_TOL
    ids = user_prompt(loaded, loaded.prompt.image(grid), "what is this?")
    expected = reference_logits(ref, ids, pixel_values=patches, image_grid_thw=torch.tensor([grid]))
    assert rel_err(loaded.model.prompt_logits(torch.tensor(ids), images=[(patches, grid)]), expected) < REL_TOL


def test_text_and_video(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    patches, grid = patchify(frames_of(6, 56, 84, 3), loaded.model.cfg.vision)
    ids = user_prompt(loaded, loaded.prompt.video(grid))
    expected = reference_logits(
        ref,
        ids,
        pixel_values_videos=patches,
        video_grid_thw=torch.tensor([grid]),
        video_second_per_grid=torch.tensor([1.0]),
    )
    got = loaded.model.prompt_logits(torch.tensor(ids), videos=[VideoInput(patches, grid, 1.0)])
    assert rel_err(got, expected) < REL_TOL


def test_video_with_audio_interleaved(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    patches, grid = patchify(frames_of(10, 56, 56, 4), loaded.model.cfg.vision)  # 5 s of video
    mel = mel_of(loaded, 4.3, 5)
    n_audio = loaded.model.encode_audio(mel).shape[0]
    ids = user_prompt(loaded, loaded.prompt.video_with_audio(grid, 1.0, n_audio))
    expected = reference_logits(
        ref,
        ids,
        input_features=[mel],
        pixel_values_videos=patches,
        video_grid_thw=torch.tensor([grid]),
        video_second_per_grid=torch.tensor([1.0]),
        use_audio_in_video=True,
    )
    got = loaded.model.prompt_logits(
        torch.tensor(ids), audio_mels=[mel], videos=[VideoInput(patches, grid, 1.0)], use_audio_in_video=True
    )
    assert rel_err(got, expected) < REL_TOL


# ---- live sessions: incremental prefill equals the offline prompt --------------------------------------------


def _last_logits_offline(loaded: LoadedThinker, ids: list[int], **kw: Any) -> torch.Tensor:
    return loaded.model.prompt_logits(torch.tensor(ids), **kw)[-1]


def test_live_audio_blocks_prefill_while_speaking(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    _, loaded, _ = tiny
    mel = mel_of(loaded, 4.6, 6)
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.begin_audio()
    fed = [s.push_audio_features(mel[:, a : a + 70]) for a in range(0, mel.shape[1], 70)]
    assert sum(fed) == 100  # two complete 2-s blocks prefilled before the turn ends
    tail = s.end_audio()
    s.add_text("hi")
    logits = s.end_user_turn()
    n = loaded.model.encode_audio(mel).shape[0]
    assert tail == n - 100
    expected = _last_logits_offline(loaded, user_prompt(loaded, loaded.prompt.audio(n)), audio_mels=[mel])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_live_video_patches_and_image(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    _, loaded, _ = tiny
    frames = frames_of(5, 56, 84, 7)  # odd: the last frame is repeated into a third patch
    patches, grid = patchify(frames, loaded.model.cfg.vision)
    image = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8)
    ipatch, igrid = loaded.model.image_input(image)
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.add_image(ipatch, igrid)
    s.begin_video(56, 84)
    fed = [s.push_video_frame(f) for f in frames]
    assert fed == [0, 6, 0, 6, 0]  # each temporal patch is prefilled as its second frame arrives
    s.end_video()
    s.add_text("hi")
    logits = s.end_user_turn()
    ids = user_prompt(loaded, loaded.prompt.image(igrid) + loaded.prompt.video(grid))
    expected = _last_logits_offline(loaded, ids, images=[(ipatch, igrid)], videos=[VideoInput(patches, grid, 1.0)])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("n_frames,seconds", [(10, 4.3), (4, 5.1)])
def test_live_video_with_audio_interleave(tiny: tuple[Any, LoadedThinker, Path], n_frames: int, seconds: float) -> None:
    _, loaded, _ = tiny
    frames = frames_of(n_frames, 56, 56, 8)
    patches, grid = patchify(frames, loaded.model.cfg.vision)
    mel = mel_of(loaded, seconds, 9)
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.begin_av(56, 56)
    # real time: 2 frames and 100 mel frames per second of media, arriving in alternation
    for k in range(max(n_frames // 2, mel.shape[1] // 100 + 1)):
        for f in frames[2 * k : 2 * k + 2]:
            s.push_av_frame(f)
        s.push_av_audio_features(mel[:, 100 * k : 100 * (k + 1)])
    s.end_av()
    s.add_text("hi")
    logits = s.end_user_turn()
    n_audio = loaded.model.encode_audio(mel).shape[0]
    ids = user_prompt(loaded, loaded.prompt.video_with_audio(grid, 1.0, n_audio))
    assert s.prefilled_tokens == len(ids)
    expected = _last_logits_offline(
        loaded, ids, audio_mels=[mel], videos=[VideoInput(patches, grid, 1.0)], use_audio_in_video=True
    )
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_generation_continues_positions_across_turns(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    ref, loaded, _ = tiny
    from omni.model.lm.sampling import SamplingConfig

    s = ThinkerSession(loaded.model, loaded.prompt)
    mel = mel_of(loaded, 1.1, 10)
    s.start_user_turn()
    s.begin_audio()
    s.push_audio_features(mel)
    n = s.end_audio()
    s.add_text("hi")
    s.end_user_turn()
    reply = list(s.generate(SamplingConfig(temperature=0.0, max_new_tokens=4, repetition_penalty=1.0), frozenset()))
    s.start_user_turn()
    s.add_text("again")
    logits = s.end_user_turn()
    p = loaded.prompt
    ids = (
        user_prompt(loaded, p.audio(n))
        + reply
        + p.turn_end()
        + p.turn_start("user")
        + p.text("again")
        + p.generation_prompt()
    )
    expected = reference_logits(ref, ids, input_features=[mel])
    assert rel_err(logits, expected[-1]) < REL_TOL
    # greedy reply equals the reference's greedy choice at each step
    first = user_prompt(loaded, p.audio(n))
    assert reply[0] == int(reference_logits(ref, first, input_features=[mel])[-1].argmax())


# ---- loading ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sharded_checkpoint(tmp_path: Path, dtype: torch.dtype) -> None:
    ref, path = save_tiny_omni(tmp_path / "half", dtype=dtype, shard="100KB")
    assert (path / "model.safetensors.index.json").is_file()
    loaded = load_thinker(path)
    assert loaded.model.lm.dtype == dtype and loaded.model.visual.merger.mlp[0].weight.dtype == dtype
    ids = user_prompt(loaded, [], "hello")
    got = loaded.model.prompt_logits(torch.tensor(ids)).float()
    expected = reference_logits(ref, ids)
    assert rel_err(got, expected) < 5e-2  # bf16/fp16 weights and activations: a few 1e-3 per op


def test_thinker_only_checkpoint_without_talker(tmp_path: Path) -> None:
    _, path = save_tiny_omni(tmp_path / "thinker-only", with_talker=False)
    loaded = load_thinker(path)
    assert loaded.model.cfg.text.vocab_size == 288


def test_missing_encoder_weights_are_named(tiny: tuple[Any, LoadedThinker, Path], tmp_path: Path) -> None:
    _, _, path = tiny
    bad = tmp_path / "no-audio"
    bad.mkdir()
    for f in path.iterdir():
        if f.suffix != ".safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    tensors = {
        k: v
        for k, v in load_file(str(path / "model.safetensors")).items()
        if not k.startswith("thinker.audio_tower.layers.")
    }
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"audio encoder weights are incomplete.*layers\.0\."):
        load_thinker(bad)


def test_bad_media_inputs(tiny: tuple[Any, LoadedThinker, Path]) -> None:
    _, loaded, _ = tiny
    th = loaded.model
    # 8 kHz stereo is down-mixed and resampled: 1 s -> 100 mel frames -> 25 tokens
    stereo = 0.1 * torch.randn(2, 8000)
    mel = th.audio_features(stereo, 8000)
    assert mel.shape == (128, 100) and th.encode_audio(mel).shape[0] == 25
    with pytest.raises(AudioInputError, match="zero-length"):
        th.audio_features(torch.zeros(0), 16000)
    with pytest.raises(VisionInputError, match="smaller than one 14x14 patch"):
        th.image_input(torch.zeros(10, 40, 3, dtype=torch.uint8))
    s = ThinkerSession(th, loaded.prompt)
    s.start_user_turn()
    s.begin_video(56, 56)
    with pytest.raises(VisionInputError, match="no frames"):
        s.end_video()
    s2 = ThinkerSession(th, loaded.prompt)
    s2.begin_audio()
    with pytest.raises(AudioInputError, match="zero-length"):
        s2.end_audio()


# ---- omni chat with media files ------------------------------------------------------------------------------


def _write_media(d: Path) -> tuple[Path, Path, Path]:
    import wave

    import av
    import numpy as np

    wav = d / "q.wav"
    with wave.open(str(wav), "wb") as w:  # 8 kHz stereo: the loader resamples and down-mixes
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.random.default_rng(0).normal(0, 3000, (2 * 8000 * 3,))).astype("<i2").tobytes())
    rng = np.random.default_rng(1)
    png = d / "x.png"
    with av.open(str(png), "w") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
        f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
        for pkt in s.encode(f):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    mp4 = d / "v.mp4"
    with av.open(str(mp4), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for _ in range(25):  # 2.5 s at 10 fps -> 5 frames at 2 fps... rounded to an even count
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return wav, png, mp4


def test_omni_chat_with_media_files(
    tiny: tuple[Any, LoadedThinker, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from omni.app.cli import main

    _, _, path = tiny
    wav, png, mp4 = _write_media(tmp_path)
    args = ["chat", "--model", str(path), "--max-new-tokens", "3", "--repetition-penalty", "1.0"]
    assert main([*args, "--audio", str(wav), "--image", str(png), "--video", str(mp4), "--prompt", "what?"]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\n") and out.err == ""
    assert main([*args, "--audio", str(tmp_path / "missing.wav"), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "--audio" in err and "no such file" in err
    (tmp_path / "empty.wav").write_bytes(b"")
    assert main([*args, "--audio", str(tmp_path / "empty.wav"), "--prompt", "x"]) == 1
    assert "omni chat: error" in capsys.readouterr().err
    assert main(["chat", "--audio", str(wav), "--prompt", "x"]) == 1  # the embedded text model takes no media
    assert "Qwen2.5-Omni or Qwen3-Omni checkpoint" in capsys.readouterr().err


def test_presets_have_the_real_shapes() -> None:
    from omni.model.thinker import ThinkerConfig

    for name, width, layers in (("qwen2.5-omni-7b", 3584, 28), ("qwen2.5-omni-3b", 2048, 36)):
        cfg = ThinkerConfig.from_name(name)
        assert (cfg.text.hidden_size, cfg.text.num_layers, cfg.text.mrope_section) == (width, layers, (16, 24, 24))
        assert cfg.audio.output_dim == cfg.vision.out_hidden_size == width
        assert (cfg.audio.num_layers, cfg.vision.depth, cfg.tokens.audio, cfg.tokens.video) == (32, 32, 151646, 151656)
        assert ThinkerConfig.from_hf_config(cfg.to_hf_config()) == cfg
