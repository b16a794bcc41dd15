"""Qwen3-Omni TM-RoPE position ids: exactly transformers' Qwen3OmniMoe `get_rope_index` for every layout."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from model.qwen3.config import Qwen3ThinkerConfig, aut_token_count
from model.tmrope import PositionCursor, StreamingVideoPositions, TMRoPEConfig, rope_index
from tests.model.qwen3_tiny import IDS, tiny_config_dict

THINKER = Qwen3ThinkerConfig.from_hf_config(tiny_config_dict())
TOK = THINKER.tokens
CFG = THINKER.rope


@pytest.fixture(scope="module")
def ref() -> Any:
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from tests.model.qwen3_tiny import hf_config

    return Qwen3OmniMoeThinkerForConditionalGeneration(hf_config().thinker_config).eval()


def processor_av_placeholder(n_audio: int, grid: tuple[int, int, int], spg: float) -> list[int]:
    """The reference processor's own video-with-audio placeholder, mapped to our tiny ids."""
    from transformers import Qwen3OmniMoeProcessor

    proc = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2),
        audio_bos_token="B",
        audio_eos_token="E",
        video_token="V",
        audio_token="A",
    )
    text = Qwen3OmniMoeProcessor.replace_video_with_audio_token(
        proc,
        {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [spg]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=13,
    )
    table = {"B": IDS["audio_start"], "E": IDS["audio_end"], "V": IDS["video"], "A": IDS["audio"]}
    return [IDS["vision_start"]] + [table[c] for c in text] + [IDS["vision_end"]]


def text(n: int, base: int = 10) -> list[int]:
    return [base + i % 50 for i in range(n)]


def audio(frames: int) -> list[int]:
    return [IDS["audio_start"]] + [IDS["audio"]] * aut_token_count(frames) + [IDS["audio_end"]]


def vision(token: str, grid: tuple[int, int, int]) -> list[int]:
    return [IDS["vision_start"]] + [IDS[token]] * (grid[0] * grid[1] * grid[2] // 4) + [IDS["vision_end"]]


def turn(role: int, body: list[int]) -> list[int]:
    return [IDS["im_start"], role, 10] + body + [IDS["im_end"], 10]


Grid = tuple[int, int, int]
# (name, ids, audio mel frames, image grids, video grids, seconds per grid, use_audio_in_video)
CASES: list[tuple[str, list[int], list[int], list[Grid], list[Grid], list[float], bool]] = [
    ("text", text(17), [], [], [], [], False),
    ("audio 3.3 s", text(5) + audio(330) + text(4), [330], [], [], [], False),
    ("audio 0.07 s", text(2) + audio(7) + text(3), [7], [], [], [], False),
    ("image", text(3) + vision("image", (1, 6, 8)) + text(6), [], [(1, 6, 8)], [], [], False),
    ("video 1 fps", text(3) + vision("video", (3, 4, 6)) + text(2), [], [], [(3, 4, 6)], [2.0], False),
    ("video 2 fps", text(3) + vision("video", (4, 4, 4)) + text(2), [], [], [(4, 4, 4)], [1.0], False),
    ("video 0.5 fps", text(1) + vision("video", (2, 2, 2)) + text(2), [], [], [(2, 2, 2)], [4.0], False),
    (
        "two turns, several media",
        turn(IDS["user"], text(4) + audio(199) + vision("image", (1, 4, 4)) + text(3) + vision("video", (2, 6, 4)))
        + turn(IDS["assistant"], text(5))
        + turn(IDS["user"], audio(455) + text(2) + vision("image", (1, 8, 2)) + text(3))
        + [IDS["im_start"], IDS["assistant"], 10],
        [199, 455],
        [(1, 4, 4), (1, 8, 2)],
        [(2, 6, 4)],
        [2.0],
        False,
    ),
]


def av_case(frames: int, grid: Grid, spg: float) -> tuple[Any, ...]:
    ids = text(4) + processor_av_placeholder(aut_token_count(frames), grid, spg) + text(3)
    return (f"audio-in-video {frames} frames {grid} spg {spg}", ids, [frames], [], [grid], [spg], True)


AV_CASES = [
    av_case(530, (6, 4, 4), 1.0),  # audio outlasts the video
    av_case(310, (8, 4, 4), 1.0),  # video outlasts the audio
    av_case(1000, (3, 2, 4), 2.0),
    av_case(150, (1, 2, 2), 2.0),
    av_case(40, (2, 8, 8), 2.0),
    av_case(40, (1, 16, 16), 2.0),  # a short audio after a wide frame: the eos follows the audio tail's ids,
    # not the frame's larger width ids
    av_case(400, (4, 2, 2), 1.0),  # the streams end together
]


def two_turn_av_case() -> tuple[Any, ...]:
    ids = (
        turn(IDS["user"], text(2) + processor_av_placeholder(aut_token_count(620), (6, 4, 4), 1.0) + text(3))
        + turn(IDS["assistant"], text(6))
        + turn(IDS["user"], vision("image", (1, 4, 6)) + audio(250) + text(2))
        + [IDS["im_start"], IDS["assistant"], 10]
    )
    return ("two turns, video with audio, image, audio", ids, [620, 250], [(1, 4, 6)], [(6, 4, 4)], [1.0], True)


@pytest.mark.parametrize("case", CASES + AV_CASES + [two_turn_av_case()], ids=lambda c: c[0])
def test_equals_reference_get_rope_index(ref: Any, case: tuple[Any, ...]) -> None:
    _, ids, frames, images, videos, spg, aiv = case
    t = torch.tensor([ids])
    with torch.no_grad():
        expected, delta = ref.get_rope_index(
            t,
            torch.tensor(images) if images else None,
            torch.tensor(videos) if videos else None,
            torch.ones_like(t),
            aiv,
            torch.tensor(frames) if frames else None,
            torch.tensor(spg) if spg else None,
        )
    got = rope_index(
        ids,
        TOK,
        CFG,
        audio_tokens=[THINKER.audio_tokens(f) for f in frames],
        image_grids=images,
        video_grids=videos,
        seconds_per_grid=spg,
        use_audio_in_video=aiv,
    )
    exp = expected[:, 0]
    assert torch.equal(exp, exp.round())  # whole numbers: the comparison below is exact
    assert got.dtype == torch.long and torch.equal(got, exp.long())
    # Decode continues at max + 1 on all axes: the reference's cache_len + rope_delta.
    cursor = PositionCursor(CFG, int(got.max()) + 1)
    for k in range(3):
        assert cursor.text(1)[:, 0].tolist() == [len(ids) + k + int(delta)] * 3


def test_aut_token_count_equals_reference() -> None:
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = torch.arange(0, 2000)
    expected = _get_feat_extract_output_lengths(frames, 50)
    assert [aut_token_count(int(f)) for f in frames] == expected.tolist()
    assert aut_token_count(300) == 39  # 3 s -> 3 x 13


def test_pieces_pushed_live_equal_the_whole_prompt() -> None:
    """Audio block by block (13 tokens = 1 s), video patch by patch: the same ids as the offline prompt."""
    frames, vgrid = 455, (3, 4, 6)
    n = aut_token_count(frames)
    ids = text(4) + audio(frames) + text(2) + vision("video", vgrid) + text(3)
    whole = rope_index(ids, TOK, CFG, audio_tokens=[n], video_grids=[vgrid], seconds_per_grid=[2.0])
    c = PositionCursor(CFG)
    parts = [c.text(5)]
    parts += [c.audio(min(13, n - s)) for s in range(0, n, 13)]
    parts += [c.text(4)]
    live = StreamingVideoPositions(c.next_id, 2.0)
    parts += [live.next_patch(c, (4, 6)) for _ in range(3)]
    parts += [c.text(4)]
    assert torch.equal(torch.cat(parts, dim=1), whole)


def test_qwen3_rules_differ_from_qwen2_5_where_the_reference_does() -> None:
    """The same audio-in-video prompt under both styles: Qwen3's bos pair takes two ids, Qwen2.5's one."""
    q3 = PositionCursor(CFG)
    q25 = PositionCursor(TMRoPEConfig(13, 2.0, 2, style="qwen2.5"))
    assert q3.pair()[0].tolist() == [0, 1] and q25.pair()[0].tolist() == [0, 0]


def test_fractional_temporal_ids_are_rejected() -> None:
    """0.5 s per temporal patch at 13 ids/s is 6.5 ids: the reference would use fractional positions."""
    ids = text(2) + vision("video", (2, 2, 2)) + text(2)
    with pytest.raises(ValueError, match="fractional"):
        rope_index(ids, TOK, CFG, video_grids=[(2, 2, 2)], seconds_per_grid=[0.5])


def test_wrong_interleave_is_rejected() -> None:
    n = aut_token_count(310)
    good = processor_av_placeholder(n, (8, 4, 4), 1.0)
    body = good[2:-2]
    k = body.index(IDS["audio"])  # the first audio token: swap it with the video token before it
    body[k - 1], body[k] = body[k], body[k - 1]
    bad = good[:2] + body + good[-2:]  # same counts, wrong order
    with pytest.raises(ValueError, match="interleave"):
        rope_index(
            text(2) + bad, TOK, CFG, audio_tokens=[n], video_grids=[(8, 4, 4)], seconds_per_grid=[1.0],
            use_audio_in_video=True,
        )


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(ValueError, match="style"):
        TMRoPEConfig(style="qwen4")
