"""Our Qwen3-Omni Talker (MoE decoder + code predictor) against transformers' on the tiny released-layout
checkpoint (float32, greedy): codebook-0 logits within 1e-4 relative and every codebook of every frame equal.

Both sides get the same Thinker outputs: transformers' own Thinker generates the reply (greedy) and its input
embeddings and hidden states (captured from `thinker.generate`) are what our Talker is fed, so this test checks
the Talker alone. Our Talker is fed the way a live session feeds it: user-turn slots, the 9-position prefix after
the first reply token, then one reply token at a time (`push_text`), then `end_text`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from omni.model.errors import CheckpointError, ConfigError
from omni.model.qwen3.config import Qwen3OmniConfig, aut_token_count
from omni.model.qwen3.talker import GREEDY, Qwen3Talker, load_qwen3_talker, read_speech_config, user_turn_mask
from omni.model.tmrope import rope_index
from tests.model.qwen3_tiny import IDS

transformers = pytest.importorskip("transformers")

TEXT_TOKENS = 6  # reply tokens the Thinker generates (the last is never fed back, as in the reference)
FRAMES = 9  # codebook-0 choices: more than the text, so tts_eos and tts_pad steps are covered


@pytest.fixture(scope="module")
def reference(qwen3_tiny_dir: Path) -> Any:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    return Qwen3OmniMoeForConditionalGeneration.from_pretrained(qwen3_tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def config(qwen3_tiny_dir: Path) -> Qwen3OmniConfig:
    return read_speech_config(qwen3_tiny_dir)[1]


@pytest.fixture(scope="module")
def talker(qwen3_tiny_dir: Path) -> Qwen3Talker:
    return load_qwen3_talker(qwen3_tiny_dir)


def _text(s: str) -> list[int]:
    return list(s.encode())  # the tiny tokenizer: one token per byte


def _prompt(audio_tokens: int = 0) -> list[int]:
    """system, user (text), assistant (text), user (text and, optionally, audio), then the reply prefix."""
    s, e, nl = IDS["im_start"], IDS["im_end"], _text("\n")
    audio = [IDS["audio_start"], *[IDS["audio"]] * audio_tokens, IDS["audio_end"]] if audio_tokens else []
    return ([s, IDS["system"], *nl, *_text("be brief"), e, *nl]
            + [s, IDS["user"], *nl, *_text("hello"), e, *nl]
            + [s, IDS["assistant"], *nl, *_text("hi!"), e, *nl]
            + [s, IDS["user"], *nl, *audio, *_text("what is this?"), e, *nl]
            + [s, IDS["assistant"], *nl])


def run_reference(model: Any, ids: list[int], speaker: str, **kw: Any) -> tuple[Any, Any]:
    """transformers' generate, greedy on the Thinker, Talker and code predictor; returns the captured
    (thinker result, talker result)."""
    captured: dict[str, Any] = {}

    def capture(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            captured[name] = fn(*a, **k)
            return captured[name]
        return wrapped

    with mock.patch.object(model.thinker, "generate", capture("thinker", model.thinker.generate)), \
            mock.patch.object(model.talker, "generate", capture("talker", model.talker.generate)):
        model.generate(input_ids=torch.tensor([ids]), speaker=speaker, thinker_max_new_tokens=TEXT_TOKENS,
                       thinker_eos_token_id=None, thinker_do_sample=False, talker_max_new_tokens=FRAMES,
                       talker_do_sample=False, talker_output_logits=True, **kw)
    return captured["thinker"], captured["talker"]


def run_ours(talker: Qwen3Talker, cfg: Qwen3OmniConfig, ids: list[int], thinker: Any, table: torch.Tensor,
             speaker: str, audio_tokens: tuple[int, ...] = ()) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Feed our Talker the reference Thinker's outputs as a live session would; (codebook-0 logits, frames)."""
    tk = cfg.talker
    assert tk is not None
    layer = tk.accept_hidden_layer
    embeds = torch.cat([h[0] for h in thinker.hidden_states], dim=1)[0]  # [L - 1, E]: the last token is never fed
    hidden = torch.cat([h[layer] for h in thinker.hidden_states], dim=1)[0]
    P = len(ids)
    prompt = torch.tensor(ids)
    user = user_turn_mask(prompt, cfg.im_start_token_id, cfg.user_token_id)
    media = torch.isin(prompt, torch.tensor([tk.audio_token_id, tk.image_token_id, tk.video_token_id]))
    positions = rope_index(prompt[user], cfg.thinker.tokens, tk.rope, audio_tokens=audio_tokens)
    texts = talker.texts(table, cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id)
    state = talker.init_state(texts, tk.speaker(speaker), sampling=GREEDY, predictor=GREEDY)
    state.sampling = dataclasses.replace(state.sampling, repetition_penalty=1.05, max_new_tokens=FRAMES)
    talker.feed_user(state, talker.user_slots(embeds[:P][user], hidden[:P][user], media[user]), positions)
    start = max(i for i in range(P - 1) if ids[i] == cfg.im_start_token_id and ids[i + 1] == cfg.assistant_token_id)
    talker.begin_reply(state, embeds[start : start + 3], embeds[P])
    logits, frames = [], []
    replies = embeds[P + 1 :]
    fed = 0
    while True:
        while not talker.can_step(state):  # the Thinker's next token arrives
            if fed < replies.shape[0]:
                talker.push_text(state, replies[fed])
                fed += 1
            else:
                talker.end_text(state)
        frame = talker.step(state)
        assert state.last_logits is not None
        logits.append(state.last_logits)
        if frame is None:
            break
        frames.append(frame)
        if state.done:  # the frame limit (FRAMES): that frame is returned whole
            break
    return logits, frames


def _compare(reference: Any, talker: Qwen3Talker, cfg: Qwen3OmniConfig, ids: list[int], speaker: str,
             audio_tokens: tuple[int, ...] = (), **kw: Any) -> None:
    table = reference.thinker.get_input_embeddings().weight.detach()
    thinker, ref = run_reference(reference, ids, speaker, **kw)
    logits, frames = run_ours(talker, cfg, ids, thinker, table, speaker, audio_tokens)
    want_logits = torch.cat(list(ref.logits))  # [steps, V], raw
    got_logits = torch.cat(logits)
    assert want_logits.shape == got_logits.shape == (FRAMES, cfg.talker.codec_vocab_size)  # type: ignore[union-attr]
    scale = want_logits.abs().max().item()
    assert scale > 1.0, "weak test: reference logits are near zero"
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4 * scale)
    want_codes = torch.stack([h[-1] for h in ref.hidden_states if h[-1] is not None], dim=1)[0]  # [n, Q]
    got = torch.stack(frames)
    assert want_codes.shape[0] >= FRAMES - 1 and want_codes.shape[1] == got.shape[1] == 4
    assert torch.equal(got[: want_codes.shape[0]], want_codes)
    assert got[:, 0].tolist() == ref.sequences[0, : got.shape[0]].tolist()
    assert len(set(got[:, 1:].flatten().tolist())) > 3, "weak test: the code predictor repeats one code"


def test_text_reply_matches_transformers(reference: Any, talker: Qwen3Talker, config: Qwen3OmniConfig) -> None:
    _compare(reference, talker, config, _prompt(), "ethan")


def test_audio_turn_matches_transformers(reference: Any, talker: Qwen3Talker, config: Qwen3OmniConfig) -> None:
    """A user turn with audio: hidden_projection of the Thinker's layer-`accept_hidden_layer` states at the
    audio positions, and TM-RoPE positions over the user tokens."""
    mel = 250  # 2.5 s of mel frames
    n = aut_token_count(mel)
    feats = torch.randn(1, 128, mel, generator=torch.Generator().manual_seed(3))
    _compare(reference, talker, config, _prompt(n), "Chelsie", (n,), input_features=feats,
             feature_attention_mask=torch.ones(1, mel, dtype=torch.long))


def test_speaker_changes_the_reply(talker: Qwen3Talker, config: Qwen3OmniConfig) -> None:
    tk = config.talker
    assert tk is not None
    g = torch.Generator().manual_seed(5)
    E = tk.thinker_hidden_size
    table = torch.randn(300, E, generator=g)
    texts = talker.texts(table, config.tts_pad_token_id, config.tts_bos_token_id, config.tts_eos_token_id)
    head, first = torch.randn(3, E, generator=g), torch.randn(E, generator=g)
    out = []
    for name in ("ethan", "aiden"):
        state = talker.init_state(texts, tk.speaker(name), sampling=GREEDY, predictor=GREEDY)
        talker.begin_reply(state, head, first)
        assert state.logits is not None
        out.append(state.logits)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    with pytest.raises(ConfigError, match="chelsie"):
        tk.speaker("nobody")


def test_state_errors_and_reply_reset(talker: Qwen3Talker, config: Qwen3OmniConfig) -> None:
    tk = config.talker
    assert tk is not None
    g = torch.Generator().manual_seed(6)
    E = tk.thinker_hidden_size
    texts = talker.texts(torch.randn(300, E, generator=g), 1, 2, 3)
    state = talker.init_state(texts, tk.speaker("ethan"), sampling=GREEDY, predictor=GREEDY)
    user = talker.user_slots(torch.randn(5, E, generator=g), torch.randn(5, E, generator=g), None)
    talker.feed_user(state, user)
    with pytest.raises(ValueError, match="begin_reply"):
        talker.step(state)
    head, first, nxt = torch.randn(3, E, generator=g), torch.randn(E, generator=g), torch.randn(E, generator=g)

    def reply() -> list[torch.Tensor]:
        talker.begin_reply(state, head, first)
        frames = [talker.step(state)]
        assert not talker.can_step(state)  # frame 1 needs the next reply token
        with pytest.raises(ValueError, match="push_text"):
            talker.step(state)
        talker.push_text(state, nxt)
        frames.append(talker.step(state))
        talker.end_text(state)
        frames.append(talker.step(state))
        with pytest.raises(ValueError, match="feed_user during a reply"):
            talker.feed_user(state, user)
        talker.end_reply(state)
        return [f for f in frames if f is not None]

    first_reply = reply()
    assert state.decoder.cache.length == 5 and state.decoder.next_position == 5  # the reply left the cache
    assert all(torch.equal(a, b) for a, b in zip(first_reply, reply(), strict=True))


def test_user_turn_mask() -> None:
    ids = torch.tensor(_prompt())
    mask = user_turn_mask(ids, IDS["im_start"], IDS["user"])
    turns = [i for i in range(len(ids)) if ids[i] == IDS["im_start"]]
    assert mask[turns[1] : turns[2]].all() and mask[turns[3] : turns[4]].all()
    assert not mask[: turns[1]].any() and not mask[turns[2] : turns[3]].any() and not mask[turns[4] :].any()


def test_thinker_only_and_foreign_checkpoints_are_refused(qwen3_tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    raw = json.loads((qwen3_tiny_dir / "config.json").read_text())
    thinking = {k: v for k, v in raw.items() if k not in ("talker_config", "code2wav_config")}
    (tmp_path / "config.json").write_text(json.dumps(thinking | {"enable_audio_output": False}))
    with pytest.raises(CheckpointError, match="thinker-only"):
        load_qwen3_talker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw | {"model_type": "qwen2_5_omni"}))
    with pytest.raises(CheckpointError, match="not a Qwen3-Omni"):
        load_qwen3_talker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw))  # a config that speaks, weights without a talker
    save_file({"thinker.lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no talker"):
        load_qwen3_talker(tmp_path)
