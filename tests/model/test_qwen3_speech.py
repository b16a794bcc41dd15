"""The Qwen3-Omni speaking session on the tiny checkpoint: Talker frames streamed through Code2Wav equal the
whole-sequence decode of the same codes, audio follows the first frame, barge-in resets, speakers by name.
(The Talker's parity with transformers is tests/model/test_qwen3_talker.py; here the Thinker outputs are
random vectors in Thinker width.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from omni.model.errors import CheckpointError, ConfigError
from omni.model.qwen3.speech import Qwen3SpeakingSession, Qwen3SpeechModels, Qwen3SpeechSettings, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.model.tmrope import rope_index
from tests.model.qwen3_tiny import IDS

FRAMES = 7
GREEDY_LIMITED = dataclasses.replace(GREEDY, max_new_tokens=FRAMES)


@pytest.fixture(scope="module")
def models(qwen3_tiny_dir: Path) -> Qwen3SpeechModels:
    # float64 Code2Wav: streamed == whole to 1e-10 (float32 differs by rounding, tests/model/test_code2wav.py)
    return load_qwen3_speech(qwen3_tiny_dir, code2wav_dtype=torch.float64)


def _inputs(seed: int, E: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.tensor([IDS["im_start"], IDS["user"], 10, 72, 105, IDS["im_end"], 10])
    return {"table": torch.randn(300, E, generator=g), "user": user, "user_embeds": torch.randn(7, E, generator=g),
            "user_hidden": torch.randn(7, E, generator=g), "head": torch.randn(3, E, generator=g),
            "reply": torch.randn(4, E, generator=g)}


def _session(models: Qwen3SpeechModels, x: dict[str, torch.Tensor], **kw: object) -> Qwen3SpeakingSession:
    settings = Qwen3SpeechSettings(sampling=GREEDY_LIMITED, predictor_sampling=GREEDY, **kw)  # type: ignore[arg-type]
    s = Qwen3SpeakingSession(models, x["table"], settings)
    s.feed_user_turn(x["user"], x["user_embeds"], x["user_hidden"])
    return s


def _reply(s: Qwen3SpeakingSession, x: dict[str, torch.Tensor]) -> tuple[list[list], list[torch.Tensor]]:
    """Chunks per pump call (begin, each pushed token, end) and the frames."""
    s.begin_reply(x["head"], x["reply"][0])
    pumps = [list(s.pump())]
    for e in x["reply"][1:]:
        s.push_text(e)
        pumps.append(list(s.pump()))
    s.end_text()
    frames = s.frames
    pumps.append(list(s.pump()))
    return pumps, frames


def test_streamed_audio_equals_the_whole_decode(models: Qwen3SpeechModels) -> None:
    x = _inputs(0)
    s = _session(models, x)
    pumps, frames = _reply(s, x)
    assert not s.replying  # the Talker reached its frame limit: flushed and closed
    assert len(frames) == FRAMES
    # first audio right after the first frame: 1920 - 555 samples
    assert len(pumps[0]) == 1 and pumps[0][0].start == 0 and pumps[0][0].samples.numel() == 1365
    chunks = [c for p in pumps for c in p]
    assert [c.start for c in chunks] == [sum(c.samples.numel() for c in chunks[:i]) for i in range(len(chunks))]
    wav = torch.cat([c.samples for c in chunks])
    whole = models.code2wav(torch.stack(frames, dim=1)[None])[0]
    assert wav.shape == whole.shape == (FRAMES * 1920 - 555,)
    assert whole.abs().max() > 1e-3
    assert (wav - whole).abs().max() < 1e-10


def test_first_chunk_size_is_configurable(models: Qwen3SpeechModels) -> None:
    x = _inputs(0)
    s = _session(models, x, first_chunk_frames=3, chunk_frames=2)
    pumps, frames = _reply(s, x)
    counts = [sum(c.samples.numel() for c in p) for p in pumps]
    # frame 0 after begin, frame k after push k: audio only once 3 frames exist, then every 2 frames
    assert counts[:4] == [0, 0, 3 * 1920 - 555, 0]
    ref = _session(models, x)
    assert all(torch.equal(a, b) for a, b in zip(frames, _reply(ref, x)[1], strict=True))


def test_barge_in_drops_the_reply_and_the_next_reply_starts_clean(models: Qwen3SpeechModels) -> None:
    x = _inputs(1)
    s = _session(models, x, first_chunk_frames=2)
    user_len = s.state.decoder.cache.length
    s.begin_reply(x["head"], x["reply"][0])
    assert list(s.pump()) == []  # one frame buffered, not yet a chunk
    s.push_text(x["reply"][1])
    s.push_text(x["reply"][2])
    assert len(list(s.pump(max_frames=1))) == 1
    s.stop()
    assert not s.replying and s.state.decoder.cache.length == user_len and not s.state.pending
    assert list(s.pump()) == []
    with pytest.raises(ValueError, match="begin_reply"):
        s.models.talker.step(s.state)
    _, again = _reply(s, x)
    _, fresh = _reply(_session(models, x, first_chunk_frames=2), x)
    assert len(again) == len(fresh) == FRAMES
    assert all(torch.equal(a, b) for a, b in zip(again, fresh, strict=True))


def test_speaker_by_name(models: Qwen3SpeechModels) -> None:
    x = _inputs(2)
    s = _session(models, x, speaker="Chelsie")
    assert s.state.speaker == s.speaker_id["chelsie"] == 1080
    s.set_speaker("AIDEN")
    assert s.state.speaker == 1082
    logits = []
    for name in ("aiden", "chelsie"):
        t = _session(models, x, speaker=name)
        t.begin_reply(x["head"], x["reply"][0])
        logits.append(t.state.logits)
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown speaker"):
        s.set_speaker("nobody")
    with pytest.raises(ConfigError, match="unknown speaker"):
        _session(models, x, speaker="nobody")
    assert models.speakers == ["aiden", "chelsie", "ethan"]


def test_user_turns_fed_one_by_one_equal_the_concatenation(models: Qwen3SpeechModels) -> None:
    """Positions of a later user turn (with an image) continue after the earlier ones, as rope_index over the
    concatenated user tokens gives them (what the reference's Talker sees)."""
    x = _inputs(3)
    grid = (1, 4, 6)  # 2 x 3 merged patches
    turn2 = torch.tensor([IDS["im_start"], IDS["user"], 10, IDS["vision_start"], *[IDS["image"]] * 6,
                          IDS["vision_end"], 63, IDS["im_end"], 10])
    g = torch.Generator().manual_seed(4)
    e2, h2 = torch.randn(turn2.shape[0], 32, generator=g), torch.randn(turn2.shape[0], 32, generator=g)
    a = _session(models, x)
    a.feed_user_turn(turn2, e2, h2, image_grids=[grid])
    a.begin_reply(x["head"], x["reply"][0])
    b = Qwen3SpeakingSession(models, x["table"], Qwen3SpeechSettings(sampling=GREEDY_LIMITED))
    ids = torch.cat([x["user"], turn2])
    pos = rope_index(ids, models.config.thinker.tokens, models.talker_config.rope, image_grids=[grid])
    assert int(pos.max()) + 1 < ids.shape[0]  # the image's ids make the positions differ from 0..L-1
    media = ids == IDS["image"]
    t = models.talker
    slots = t.user_slots(torch.cat([x["user_embeds"], e2]), torch.cat([x["user_hidden"], h2]), media)
    t.feed_user(b.state, slots, pos)
    b.begin_reply(x["head"], x["reply"][0])
    assert a.state.decoder.next_position == b.state.decoder.next_position
    torch.testing.assert_close(a.state.logits, b.state.logits, rtol=1e-5, atol=1e-5)


def test_thinker_only_checkpoint_is_refused(qwen3_tiny_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((qwen3_tiny_dir / "config.json").read_text())
    del raw["talker_config"], raw["code2wav_config"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="thinker-only.*-Instruct"):
        load_qwen3_speech(tmp_path)
