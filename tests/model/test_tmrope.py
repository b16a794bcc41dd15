"""TMRoPE position ids: exactly the reference's `get_rope_index` for every layout, piece by piece as well."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omni.model.encoders.config import audio_token_count
from omni.model.tmrope import MultimodalTokenIds, TMRoPEConfig, chunk_ranges, rope_index
from tests.model.omni_tiny import IDS, hf_config
from tests.model.tmrope_cases import Case, Prompts, against_reference, assert_live_pieces_equal_whole

TOK = MultimodalTokenIds(
    audio=IDS["audio"],
    image=IDS["image"],
    video=IDS["video"],
    audio_start=IDS["audio_start"],
    audio_end=IDS["audio_end"],
    vision_start=IDS["vision_start"],
    vision_end=IDS["vision_end"],
)
CFG = TMRoPEConfig()


@pytest.fixture(scope="module")
def ref() -> Any:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration(hf_config(with_talker=False).thinker_config).eval()


P = Prompts(IDS, audio_token_count, "Qwen2_5OmniProcessor", dict(position_id_per_seconds=25, seconds_per_chunk=2.0))
text, audio, vision = P.text, P.audio, P.vision


CASES: list[Case] = [
    ("text", text(17), [], [], [], [], False),
    ("audio 3.3 s", text(5) + audio(330) + text(4), [330], [], [], [], False),
    ("image", text(3) + vision("image", (1, 6, 8)) + text(6), [], [(1, 6, 8)], [], [], False),
    ("video 2 fps", text(3) + vision("video", (3, 4, 6)) + text(2), [], [], [(3, 4, 6)], [1.0], False),
    ("video 1 fps", text(3) + vision("video", (4, 4, 4)) + text(2), [], [], [(4, 4, 4)], [2.0], False),
    (
        "everything, two turns",
        text(4)
        + audio(199)
        + vision("image", (1, 4, 4))
        + text(3)
        + vision("video", (2, 6, 4))
        + text(5)
        + audio(455)
        + text(2)
        + vision("image", (1, 8, 2))
        + text(3),
        [199, 455],
        [(1, 4, 4), (1, 8, 2)],
        [(2, 6, 4)],
        [1.0],
        False,
    ),
]


av_case = P.av_case


AV_CASES = [
    av_case(530, (6, 4, 4), 1.0),
    av_case(310, (8, 4, 4), 1.0),
    av_case(1000, (3, 2, 4), 2.0),
    av_case(700, (4, 4, 2), 3.0),
    av_case(150, (1, 2, 2), 1.0),
]


@pytest.mark.parametrize("case", CASES + AV_CASES, ids=lambda c: c[0])
def test_equals_reference_get_rope_index(ref: Any, case: tuple[Any, ...]) -> None:
    got, expected = against_reference(ref, case, TOK, CFG, audio_token_count)
    assert torch.equal(got, expected)


def test_pieces_pushed_live_equal_the_whole_prompt() -> None:
    """Audio block by block (50 tokens), video patch by patch: the same ids as the offline prompt."""
    assert_live_pieces_equal_whole(P, TOK, CFG, block_tokens=50, spg=1.0)


def test_chunk_ranges_follow_the_reference_rule() -> None:
    assert chunk_ranges(list(range(120)), 50) == [(0, 50), (50, 100), (100, 120)]
    assert chunk_ranges([0, 0, 25, 25, 50, 50], 50) == [(0, 4), (4, 6)]
    # offsets jumping over a chunk: the counter advances by one per cut (0, 75, 150 -> three ranges)
    assert chunk_ranges([0, 75, 150], 50) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_ranges([], 50) == [(0, 0)]


def test_mismatched_placeholders_are_rejected() -> None:
    ids = text(2) + audio(330) + text(2)
    with pytest.raises(ValueError, match="placeholder tokens"):
        rope_index(ids, TOK, CFG, audio_tokens=[audio_token_count(330) + 1])
