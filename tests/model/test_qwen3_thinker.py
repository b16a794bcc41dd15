"""Qwen3-Omni Thinker parity with transformers' Qwen3OmniMoeThinkerForConditionalGeneration on the tiny sharded
checkpoint (tests/model/qwen3_tiny.py): our loader and transformers' from_pretrained read the same directory;
prompts come from our prompt builder, mel from LogMel.unpadded and pixels from our Qwen3 preprocessing, and the
TM-RoPE ids are compared with the reference's get_rope_index before the logits are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from omni.model.encoders.audio_frontend import AudioInputError
from omni.model.encoders.qwen3_vision import Qwen3VisionOutput
from omni.model.encoders.vision_preprocess import VisionInputError, VisionPreprocessConfig, preprocess_video
from omni.model.errors import CheckpointError
from omni.model.lm.decoder import LayerAdds
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.thinker import VideoInput
from tests.model.encoder_reference import rel_err

transformers = pytest.importorskip("transformers")

# fp32 on both sides: measured well below this; a missing DeepStack add or a wrong position moves logits > 1e-2.
REL_TOL = 1e-4
# small video frames (4 x 6 tokens of 32 px) keep the tiny encoder fast; the rules are the released ones
SMALL_VIDEO = dataclasses.replace(VisionPreprocessConfig.qwen3(), video_min_pixels=4 * 32 * 32,
                                  video_max_pixels=24 * 32 * 32)


@pytest.fixture(scope="module")
def tiny(qwen3_tiny_dir: Path) -> tuple[Any, LoadedQwen3]:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    ref = Qwen3OmniMoeForConditionalGeneration.from_pretrained(qwen3_tiny_dir, dtype=torch.float32).thinker.eval()
    return ref, load_qwen3(qwen3_tiny_dir, dtype=torch.float32)


def _pcm(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    return 0.3 * torch.sin(2 * torch.pi * 440 * t * (1 + t)) + 0.05 * torch.randn(t.shape, generator=g)


def _frames(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, h, w, 3), generator=torch.Generator().manual_seed(seed)).float()


def _turn(q: LoadedQwen3, *pieces: list[int], text: str = "what is this?") -> torch.Tensor:
    p = q.prompt
    ids = p.turn_start("user") + [i for piece in pieces for i in piece] + p.text(text) + p.generation_prompt()
    return torch.tensor(ids)


def _ref_forward(ref: Any, ids: torch.Tensor, **kw: Any) -> Any:
    """The reference's forward over a whole prompt: it computes TM-RoPE ids only when given an attention mask
    (otherwise it falls back to plain positions) and keeps rope deltas between calls."""
    ref.model.rope_deltas = None
    return ref(input_ids=ids[None], attention_mask=torch.ones(1, ids.shape[0], dtype=torch.long), **kw)


def _compare(ref: Any, q: LoadedQwen3, ids: torch.Tensor, mels: list[torch.Tensor] = (),  # type: ignore[assignment]
             images: list[tuple[torch.Tensor, tuple[int, int, int]]] = (),  # type: ignore[assignment]
             videos: list[VideoInput] = (), av: bool = False) -> None:  # type: ignore[assignment]
    ours_pos = q.model.positions(ids, [q.config.thinker.audio_tokens(m.shape[1]) for m in mels],
                                 [g for _, g in images], [v.grid for v in videos],
                                 [v.seconds_per_grid for v in videos], av)
    kw: dict[str, Any] = {}
    if mels:
        width = max(m.shape[1] for m in mels)
        kw["input_features"] = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in mels])
        kw["feature_attention_mask"] = torch.stack(
            [torch.arange(width) < m.shape[1] for m in mels]).long()
    if images:
        kw["pixel_values"] = torch.cat([p for p, _ in images])
        kw["image_grid_thw"] = torch.tensor([g for _, g in images])
    if videos:
        kw["pixel_values_videos"] = torch.cat([v.patches for v in videos])
        kw["video_grid_thw"] = torch.tensor([v.grid for v in videos])
        kw["video_second_per_grid"] = torch.tensor([v.seconds_per_grid for v in videos])
    ref_pos, _ = ref.get_rope_index(
        ids[None], kw.get("image_grid_thw"), kw.get("video_grid_thw"), torch.ones(1, ids.shape[0]), av,
        kw["feature_attention_mask"].sum(-1) if mels else None, kw.get("video_second_per_grid"))
    assert torch.equal(ours_pos, ref_pos[:, 0].long()), "TM-RoPE ids differ from the reference's"
    with torch.no_grad():
        want = _ref_forward(ref, ids, use_audio_in_video=av, **kw).logits[0]
    got = q.model.prompt_logits(ids, mels, images, videos, use_audio_in_video=av)
    assert want.abs().max() > 1.0, "weak test: reference logits are near zero"
    assert rel_err(got, want) < REL_TOL


def test_text_only(tiny: tuple[Any, LoadedQwen3]) -> None:
    ref, q = tiny
    _compare(ref, q, _turn(q, text="Hello there, how are you today?"))


@pytest.mark.parametrize("seconds", [1.3, 9.1])  # one partial window; a full 8-s window plus a partial one
def test_text_and_audio(tiny: tuple[Any, LoadedQwen3], seconds: float) -> None:
    ref, q = tiny
    mel = q.model.audio_features(_pcm(seconds, 1), 16000)
    ids = _turn(q, q.prompt.audio(q.config.thinker.audio_tokens(mel.shape[1])))
    # the ids are the reference tokenizer's chat template, its audio placeholder expanded by the processor's count
    from transformers import AutoTokenizer
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    hf_tok = AutoTokenizer.from_pretrained(q.source)
    n = int(_get_feat_extract_output_lengths(torch.tensor(mel.shape[1]), 50))
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what is this?"}]}]
    rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rendered = rendered.replace("<|audio_pad|>", "<|audio_pad|>" * n)
    assert ids.tolist() == hf_tok(rendered, add_special_tokens=False)["input_ids"]
    _compare(ref, q, ids, mels=[mel])


def test_text_and_image_with_deepstack(tiny: tuple[Any, LoadedQwen3]) -> None:
    ref, q = tiny
    patches, grid = q.model.image_input(_frames(1, 70, 100, 2)[0], q.vision_preprocess)
    ids = _turn(q, q.prompt.image(grid), q.prompt.text("and"), q.prompt.image(grid))
    images = [(patches, grid), (patches.flip(0), grid)]
    _compare(ref, q, ids, images=images)
    # DeepStack matters here: with its features zeroed the logits move far beyond the tolerance
    outs = [(q.model.encode_vision(p, g), g) for p, g in images]
    assert all(len(o.deepstack) == 2 for o, _ in outs)
    plain = [(Qwen3VisionOutput(o.tokens, [torch.zeros_like(d) for d in o.deepstack]), g) for o, g in outs]
    with_ds, without = q.model.features_forward(ids, images=outs), q.model.features_forward(ids, images=plain)
    assert rel_err(without.logits, with_ds.logits) > 100 * REL_TOL


def test_video(tiny: tuple[Any, LoadedQwen3]) -> None:
    ref, q = tiny
    patches, grid, spg = preprocess_video(_frames(5, 96, 128, 3), q.model.vision_cfg, SMALL_VIDEO)
    ids = _turn(q, q.prompt.video(grid))
    image, igrid = q.model.image_input(_frames(1, 64, 64, 4)[0], q.vision_preprocess)
    both = _turn(q, q.prompt.image(igrid), q.prompt.video(grid))
    _compare(ref, q, ids, videos=[VideoInput(patches, grid, spg)])
    _compare(ref, q, both, images=[(image, igrid)], videos=[VideoInput(patches, grid, spg)])


def test_video_with_audio_in_video(tiny: tuple[Any, LoadedQwen3]) -> None:
    ref, q = tiny
    patches, grid, spg = preprocess_video(_frames(6, 64, 96, 5), q.model.vision_cfg, SMALL_VIDEO)
    mel = q.model.audio_features(_pcm(2.9, 6), 16000)
    n = q.config.thinker.audio_tokens(mel.shape[1])
    ids = _turn(q, q.prompt.video_with_audio(grid, spg, n))
    _compare(ref, q, ids, mels=[mel], videos=[VideoInput(patches, grid, spg)], av=True)


def test_hidden_states_for_the_talker(tiny: tuple[Any, LoadedQwen3]) -> None:
    """The layer the Talker reads (accept_hidden_layer) and the input embeddings equal the reference's
    hidden_states[accept_hidden_layer] and hidden_states[0], with an image so DeepStack is in play."""
    ref, q = tiny
    patches, grid = q.model.image_input(_frames(1, 64, 64, 7)[0], q.vision_preprocess)
    ids = _turn(q, q.prompt.image(grid))
    layer = q.config.talker.accept_hidden_layer if q.config.talker else 1
    with torch.no_grad():
        hs = _ref_forward(ref, ids, pixel_values=patches, image_grid_thw=torch.tensor([grid]),
                          output_hidden_states=True).hidden_states
    out = q.model.prompt_forward(ids, images=[(patches, grid)], hidden_layer=layer)
    assert out.layer_hidden is not None
    assert rel_err(out.embeds, hs[0][0]) < REL_TOL
    assert rel_err(out.layer_hidden, hs[layer][0]) < REL_TOL


def test_layer_adds_are_placed_and_chunked() -> None:
    """The decoder hook on its own: adds after layer i only at the masked tokens, and the same result when
    the prompt is cut into cache chunks (the rows follow their tokens)."""
    from omni.model.lm.config import DecoderConfig
    from omni.model.lm.decoder import DecoderLM

    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=3, num_heads=2,
                        num_kv_heads=1, rope_theta=1e4, max_position_embeddings=256)
    lm = DecoderLM(cfg).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.3)
    ids = torch.randint(0, 50, (1, 11))
    mask = torch.zeros(11, dtype=torch.bool)
    mask[[2, 3, 7]] = True
    adds = LayerAdds(mask, [torch.randn(3, 16), torch.randn(3, 16)])

    def run(chunk: int, a: LayerAdds | None) -> torch.Tensor:
        out = lm(lm.init_state(CacheConfig(sinks=0, window=64, chunk=chunk)), input_ids=ids, logits="all",
                 layer_adds=a)
        assert out.logits is not None
        return out.logits[0]

    whole, chunked, plain = run(64, adds), run(4, adds), run(64, None)
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole[:2], plain[:2])  # causal: tokens before the first add are untouched
    assert (whole[2] - plain[2]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one row per masked token"):
        LayerAdds(mask, [torch.randn(2, 16)])


def test_load_errors(tmp_path: Path, qwen3_tiny_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_qwen3(tmp_path / "missing")
    from tests.model.omni_tiny import tiny_config_dict

    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict()))
    with pytest.raises(CheckpointError, match="Qwen3-Omni"):
        load_qwen3(tmp_path)


def test_load_reports_parts(tiny: tuple[Any, LoadedQwen3]) -> None:
    _, q = tiny
    assert q.speech_prefixes == ("talker.", "code2wav.")
    assert q.model.lm.cfg.num_experts == 4 and q.model.lm.cfg.qk_norm and q.model.lm.cfg.mrope_interleaved
    assert q.load_seconds > 0


# ---- the streaming session -----------------------------------------------------------------------------------


def _session(q: LoadedQwen3) -> Qwen3ThinkerSession:
    return Qwen3ThinkerSession(q.model, q.prompt, cache=CacheConfig(sinks=4, window=1024, chunk=256),
                               tokenizer=q.tokenizer)


def _loud_after_quiet(seconds: float) -> torch.Tensor:
    """A quiet lead-in, then a part far louder: the 80 dB floor rises after the first window was prefilled."""
    pcm = _pcm(seconds, 8)
    pcm[: int(16000 * 4.5)] *= 1e-5
    return pcm


@pytest.mark.parametrize("piece_s", [0.37, 1.0])
def test_session_audio_pushed_live_equals_the_whole_prompt(tiny: tuple[Any, LoadedQwen3], piece_s: float) -> None:
    _, q = tiny
    pcm = _loud_after_quiet(9.3)
    s = _session(q)
    s.start_user_turn()
    s.add_text("listen:")
    s.begin_audio()
    step = int(16000 * piece_s)
    gained = [s.push_audio(pcm[i : i + step]) for i in range(0, pcm.numel(), step)]
    assert sum(g > 0 for g in gained) >= 2, "windows should be prefilled while the audio is still arriving"
    s.end_audio()
    got = s.end_user_turn()
    mel = q.model.audio_features(pcm, 16000)
    n = q.config.thinker.audio_tokens(mel.shape[1])
    ids = torch.tensor(q.prompt.turn_start("user") + q.prompt.text("listen:") + q.prompt.audio(n)
                       + q.prompt.generation_prompt())
    want = q.model.prompt_logits(ids, [mel])[-1]
    assert s.prefilled_tokens == ids.shape[0]
    assert rel_err(got, want) < REL_TOL


def test_session_image_and_text_equal_the_whole_prompt(tiny: tuple[Any, LoadedQwen3]) -> None:
    _, q = tiny
    patches, grid = q.model.image_input(_frames(1, 64, 96, 9)[0], q.vision_preprocess)
    vpatches, vgrid, spg = preprocess_video(_frames(4, 64, 64, 10), q.model.vision_cfg, SMALL_VIDEO)
    s = _session(q)
    s.start_user_turn()
    s.add_image(patches, grid)
    s.add_video(vpatches, vgrid, spg)
    s.add_text("what changed?")
    got = s.end_user_turn()
    ids = _turn(q, q.prompt.image(grid), q.prompt.video(vgrid), text="what changed?")
    want = q.model.prompt_logits(ids, images=[(patches, grid)], videos=[VideoInput(vpatches, vgrid, spg)])[-1]
    assert rel_err(got, want) < REL_TOL


def _ref_generate(ref: Any, ids: torch.Tensor, n: int, stop: int, **kw: Any) -> list[int]:
    ref.model.rope_deltas = None
    with torch.no_grad():
        out = ref.generate(input_ids=ids[None], attention_mask=torch.ones(1, ids.shape[0], dtype=torch.long),
                           max_new_tokens=n, do_sample=False, eos_token_id=stop, pad_token_id=stop, **kw)
    return [t for t in out[0, ids.shape[0] :].tolist() if t != stop]


@pytest.mark.parametrize("with_audio", [False, True])
def test_session_greedy_generation_equals_transformers(tiny: tuple[Any, LoadedQwen3], with_audio: bool) -> None:
    """Two turns: the second turn's reply continues positions after the first reply (decode: max id + 1)."""
    ref, q = tiny
    stop = q.special.im_end
    s = _session(q)
    sampling = SamplingConfig(max_new_tokens=12)
    history: list[int] = []
    mels: list[torch.Tensor] = []
    for turn in range(2):
        s.start_user_turn()
        piece = q.prompt.turn_start("user")
        if with_audio:
            pcm = _pcm(2.3 + turn, 11 + turn)
            mel = q.model.audio_features(pcm, 16000)
            mels.append(mel)
            s.add_audio(pcm)
            piece += q.prompt.audio(q.config.thinker.audio_tokens(mel.shape[1]))
        s.add_text(f"turn {turn}: say something")
        piece += q.prompt.text(f"turn {turn}: say something") + q.prompt.generation_prompt()
        s.end_user_turn()
        ids = torch.tensor(history + piece)
        kw: dict[str, Any] = {}
        if mels:
            width = max(m.shape[1] for m in mels)
            kw["input_features"] = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in mels])
            kw["feature_attention_mask"] = torch.stack([torch.arange(width) < m.shape[1] for m in mels]).long()
        want = _ref_generate(ref, ids, sampling.max_new_tokens, stop, **kw)
        got = list(s.generate(sampling, frozenset({stop})))
        assert got == want, f"turn {turn}"
        assert len(got) >= 3, "weak test: the reply stopped at once"
        history = ids.tolist() + got + q.prompt.turn_end()
    assert s.prefilled_tokens == len(history)


def test_session_respond_text_and_errors(tiny: tuple[Any, LoadedQwen3]) -> None:
    _, q = tiny
    s = _session(q)
    with pytest.raises(RuntimeError, match="end_user_turn"):
        next(s.generate(SamplingConfig(max_new_tokens=2), frozenset()))
    s.start_user_turn()
    s.begin_audio()
    with pytest.raises(RuntimeError, match="still open"):
        s.end_user_turn()
    with pytest.raises(AudioInputError, match="too short"):
        s.end_audio()


def test_session_taps_equal_the_whole_prompt_hidden_states(tiny: tuple[Any, LoadedQwen3]) -> None:
    """What the Talker reads from a live session (embeddings and accept_hidden_layer states of every prefilled
    piece; the reply's decode steps keep no taps, so that they can run batched with other sessions' steps) equals
    the whole prompt's at those positions."""
    _, q = tiny
    layer = q.config.talker.accept_hidden_layer if q.config.talker else 1
    patches, grid = q.model.image_input(_frames(1, 64, 64, 12)[0], q.vision_preprocess)
    s = Qwen3ThinkerSession(q.model, q.prompt, tokenizer=q.tokenizer, tap_layer=layer)
    s.start_user_turn()
    s.add_image(patches, grid)
    s.add_text("describe it")
    s.end_user_turn()
    reply = list(s.generate(SamplingConfig(max_new_tokens=4), frozenset()))
    taps = s.take_taps()
    embeds, hidden = torch.cat([e for e, _ in taps]), torch.cat([h for _, h in taps])
    prompt = _turn(q, q.prompt.image(grid), text="describe it").tolist()
    ids = torch.tensor(prompt + reply + q.prompt.turn_end())
    want = q.model.prompt_forward(ids, images=[(patches, grid)], hidden_layer=layer)
    assert want.layer_hidden is not None and s.take_taps() == []
    fed = [*range(len(prompt)), *range(len(prompt) + len(reply), len(ids))]  # the prompt, then the turn's end
    assert embeds.shape[0] == len(fed)
    assert rel_err(embeds, want.embeds[fed]) < REL_TOL
    assert rel_err(hidden, want.layer_hidden[fed]) < REL_TOL


def test_bfloat16_checkpoint_loads_in_its_own_dtype(tmp_path: Path, tiny: tuple[Any, LoadedQwen3]) -> None:
    from tests.model.qwen3_tiny import save_tiny_qwen3

    _, q32 = tiny
    _, d = save_tiny_qwen3(tmp_path / "bf16", dtype=torch.bfloat16)
    q = load_qwen3(d)
    assert q.model.lm.dtype == torch.bfloat16 and q.model.audio_tower.proj2.weight.dtype == torch.bfloat16
    ids = _turn(q, text="Hello there, how are you today?")
    got, want = q.model.prompt_logits(ids).float(), q32.model.prompt_logits(ids)
    assert rel_err(got, want) < 5e-2  # bfloat16 weights and activations


def test_missing_or_foreign_tensors_are_named(tmp_path: Path, qwen3_tiny_dir: Path) -> None:
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(qwen3_tiny_dir, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    for name, short in (("thinker.model.layers.1.mlp.experts.3.down_proj.weight", r"layers\.1\.mlp\.experts\.3\.down"),
                        ("thinker.visual.merger_list.1.ln_q.weight", r"merger_list\.1\.ln_q\.weight")):
        del index["weight_map"][name]
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=short):
            load_qwen3(d)
        index = json.loads((qwen3_tiny_dir / "model.safetensors.index.json").read_text())
    talkerless = {k: v for k, v in index["weight_map"].items() if not k.startswith("talker.")}
    (d / "model.safetensors.index.json").write_text(json.dumps(index | {"weight_map": talkerless}))
    with pytest.raises(CheckpointError, match="no talker"):
        load_qwen3(d)


def test_session_live_video_frames_equal_the_whole_prompt(tiny: tuple[Any, LoadedQwen3]) -> None:
    """Frames pushed one by one (an odd count: the last patch is padded as the processor pads) give the logits
    of the whole prompt with the preprocessed video."""
    from omni.model.encoders.vision_preprocess import resize_and_normalize, video_frame_size

    _, q = tiny
    frames = _frames(5, 96, 128, 13)
    patches, grid, spg = preprocess_video(frames, q.model.vision_cfg, SMALL_VIDEO)
    size = video_frame_size(96, 128, q.model.vision_cfg, SMALL_VIDEO)
    normalised = resize_and_normalize(frames, size, SMALL_VIDEO)
    s = _session(q)
    s.start_user_turn()
    s.begin_video(*size, seconds_per_grid=spg)
    fed = [s.push_video_frame(f) for f in normalised]
    assert fed[1] > 0 and fed[0] == 0  # every second frame completes a temporal patch
    s.end_video()
    s.add_text("what happens?")
    got = s.end_user_turn()
    ids = _turn(q, q.prompt.video(grid), text="what happens?")
    want = q.model.prompt_logits(ids, videos=[VideoInput(patches, grid, spg)])[-1]
    assert rel_err(got, want) < REL_TOL


def _av_reference(ref: Any, q: LoadedQwen3, frames: torch.Tensor, pcm: torch.Tensor, text: str) -> tuple[
        torch.Tensor, torch.Tensor, float]:
    """(ids, transformers' logits [V] of the last token, seconds per grid) of one user turn holding the video with
    its audio (use_audio_in_video), then `text`, then the generation prompt."""
    patches, grid, spg = preprocess_video(frames, q.model.vision_cfg, SMALL_VIDEO)
    mel = q.model.audio_features(pcm, 16000)
    ids = _turn(q, q.prompt.video_with_audio(grid, spg, q.config.thinker.audio_tokens(mel.shape[1])), text=text)
    with torch.no_grad():
        want = _ref_forward(ref, ids, use_audio_in_video=True, input_features=mel[None],
                            feature_attention_mask=torch.ones(1, mel.shape[1], dtype=torch.long),
                            pixel_values_videos=patches, video_grid_thw=torch.tensor([grid]),
                            video_second_per_grid=torch.tensor([spg])).logits[0, -1]
    assert want.abs().max() > 1.0, "weak test: reference logits are near zero"
    return ids, want, spg


@pytest.mark.parametrize("audio_in", ["pcm", "features"])
def test_session_video_with_audio_streamed_equals_transformers(tiny: tuple[Any, LoadedQwen3], audio_in: str) -> None:
    """Frames and audio pushed as they would arrive (frames up to the audio's time first, audio in 0.37-s pieces,
    or the whole clip's log-mel in 130-frame pieces) give transformers' whole-prompt logits (use_audio_in_video):
    the merged order, the DeepStack residuals of the patches and the end ids. The pcm clip is quiet for 4.5 s,
    then loud: the first 4-s window, fed before the loud part arrived, is re-floored, and the session rolls
    back over the patches fed after it."""
    from omni.model.encoders.vision_preprocess import resize_and_normalize, video_frame_size

    ref, q = tiny
    frames, pcm = _frames(10, 64, 96, 21), _loud_after_quiet(9.3)
    ids, want, spg = _av_reference(ref, q, frames, pcm, "what happens?")
    fps = SMALL_VIDEO.fps
    size = video_frame_size(64, 96, q.model.vision_cfg, SMALL_VIDEO)
    normalised = resize_and_normalize(frames, size, SMALL_VIDEO)
    s = _session(q)
    rollbacks: list[int] = []
    roll_back = s._roll_back
    s._roll_back = lambda n, i: (rollbacks.append(n), roll_back(n, i))[1]  # type: ignore[method-assign]
    s.start_user_turn()
    s.begin_av(*size, seconds_per_grid=spg)
    lengths, sent = [], 0
    if audio_in == "pcm":
        pieces = [pcm[i : i + 5920] for i in range(0, pcm.numel(), 5920)]
    else:
        mel = q.model.audio_features(pcm, 16000)
        pieces = [mel[:, i : i + 130] for i in range(0, mel.shape[1], 130)]
    for i, piece in enumerate(pieces):
        until = (i + 1) * 0.37 if audio_in == "pcm" else (i + 1) * 1.3
        while sent < len(normalised) and sent / fps <= until:
            s.push_av_frame(normalised[sent])
            sent += 1
        if audio_in == "pcm":
            s.push_av_audio(piece)
        else:
            s.push_av_audio_features(piece)
        lengths.append(s.state.cache.length)
    for f in normalised[sent:]:
        s.push_av_frame(f)
    s.end_av()
    s.add_text("what happens?")
    got = s.end_user_turn()
    assert len(set(lengths)) >= 3, "patches and audio should be prefilled while the video is still arriving"
    if audio_in == "pcm":
        assert rollbacks, "the re-floor rollback never ran"
    # what memory gets: every audio token and patch once (the rolled-back ones were forgotten, then fed again)
    kept = s.take_encoded()
    tokens = q.config.thinker.tokens
    assert sum(p.tokens.shape[0] for p in kept if p.kind == "audio") == int((ids == tokens.audio).sum())
    assert sum(p.tokens.shape[0] for p in kept if p.kind == "video") == int((ids == tokens.video).sum())
    audio_offsets = [p.offset_s for p in kept if p.kind == "audio"]
    assert audio_offsets == sorted(audio_offsets) and audio_offsets[0] == 0.0
    assert s.prefilled_tokens == ids.shape[0]
    assert rel_err(got, want) < REL_TOL


def test_session_video_with_audio_errors(tiny: tuple[Any, LoadedQwen3]) -> None:
    _, q = tiny
    s = _session(q)
    s.start_user_turn()
    with pytest.raises(ValueError, match="fractional"):
        s.begin_av(64, 96, seconds_per_grid=0.3)  # 0.3 * 13 ids: the reference would use fractional ids
    s.begin_av(64, 96)
    with pytest.raises(RuntimeError, match="segment"):
        s.end_user_turn()
    s.push_av_audio(_pcm(0.5, 1))
    with pytest.raises(RuntimeError, match="after push_av_audio"):
        s.push_av_audio_features(torch.zeros(q.model.mel.n_mels, 10))
    with pytest.raises(VisionInputError, match="no frames"):
        s.end_av()


def test_session_video_outlasting_its_audio_equals_transformers(tiny: tuple[Any, LoadedQwen3]) -> None:
    """The audio runs out first: the patches left are one piece and the end ids follow their largest id (with
    the spatial ids), not the last audio token's; audio pushed before any frame waits for the first patch."""
    from omni.model.encoders.vision_preprocess import resize_and_normalize, video_frame_size

    ref, q = tiny
    frames, pcm = _frames(9, 64, 64, 23), _pcm(1.7, 24)
    ids, want, spg = _av_reference(ref, q, frames, pcm, "and now?")
    size = video_frame_size(64, 64, q.model.vision_cfg, SMALL_VIDEO)
    s = _session(q)
    s.start_user_turn()
    s.begin_av(*size, seconds_per_grid=spg)
    s.push_av_audio(pcm)
    for f in resize_and_normalize(frames, size, SMALL_VIDEO):
        s.push_av_frame(f)
    s.end_av()
    s.add_text("and now?")
    got = s.end_user_turn()
    assert s.prefilled_tokens == ids.shape[0]
    assert rel_err(got, want) < REL_TOL
