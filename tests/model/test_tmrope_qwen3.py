"""Qwen3-Omni TM-RoPE position ids: exactly transformers' Qwen3OmniMoe `get_rope_index` for every layout."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omni.model.qwen3.config import Qwen3ThinkerConfig, aut_token_count
from omni.model.tmrope import PositionCursor, TMRoPEConfig, rope_index
from tests.model.qwen3_tiny import IDS, tiny_config_dict
from tests.model.tmrope_cases import Case, Prompts, against_reference, assert_live_pieces_equal_whole

THINKER = Qwen3ThinkerConfig.from_hf_config(tiny_config_dict())
TOK = THINKER.tokens
CFG = THINKER.rope


@pytest.fixture(scope="module")
def ref() -> Any:
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from tests.model.qwen3_tiny import hf_config

    return Qwen3OmniMoeThinkerForConditionalGeneration(hf_config().thinker_config).eval()


P = Prompts(IDS, aut_token_count, "Qwen3OmniMoeProcessor", dict(position_id_per_seconds=13))
text, audio, vision, processor_av_placeholder = P.text, P.audio, P.vision, P.av_placeholder


def turn(role: int, body: list[int]) -> list[int]:
    return [IDS["im_start"], role, 10] + body + [IDS["im_end"], 10]


CASES: list[Case] = [
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


av_case = P.av_case


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
    got, exp = against_reference(ref, case, TOK, CFG, THINKER.audio_tokens)
    assert torch.equal(exp, exp.round())  # whole numbers: the comparison below is exact
    assert got.dtype == torch.long and torch.equal(got, exp.long())


def test_aut_token_count_equals_reference() -> None:
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = torch.arange(0, 2000)
    expected = _get_feat_extract_output_lengths(frames, 50)
    assert [aut_token_count(int(f)) for f in frames] == expected.tolist()
    assert aut_token_count(300) == 39  # 3 s -> 3 x 13


def test_pieces_pushed_live_equal_the_whole_prompt() -> None:
    """Audio block by block (13 tokens = 1 s), video patch by patch: the same ids as the offline prompt."""
    assert_live_pieces_equal_whole(P, TOK, CFG, block_tokens=13, spg=2.0)


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
