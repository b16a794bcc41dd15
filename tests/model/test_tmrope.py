"""TMRoPE position ids: exactly the reference's `get_rope_index` for every layout, piece by piece as well."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from model.encoders.config import audio_token_count
from model.tmrope import (
    MultimodalTokenIds,
    PositionCursor,
    StreamingVideoPositions,
    TMRoPEConfig,
    chunk_ranges,
    rope_index,
)
from tests.model.omni_tiny import IDS, hf_config

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


def processor_av_placeholder(n_audio: int, grid: tuple[int, int, int], spg: float) -> list[int]:
    """The reference processor's own video-with-audio placeholder, mapped to our tiny ids."""
    from transformers import Qwen2_5OmniProcessor

    proc = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2),
        audio_bos_token="B",
        audio_eos_token="E",
        video_token="V",
        audio_token="A",
    )
    proc.get_chunked_index = lambda idx, n: Qwen2_5OmniProcessor.get_chunked_index(proc, idx, n)
    text = Qwen2_5OmniProcessor.replace_video_with_audio_token(
        proc,
        {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [spg]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=25,
        seconds_per_chunk=2.0,
    )
    table = {"B": IDS["audio_start"], "E": IDS["audio_end"], "V": IDS["video"], "A": IDS["audio"]}
    return [IDS["vision_start"]] + [table[c] for c in text] + [IDS["vision_end"]]


def text(n: int, base: int = 10) -> list[int]:
    return [base + i % 50 for i in range(n)]


def audio(frames: int) -> list[int]:
    return [IDS["audio_start"]] + [IDS["audio"]] * audio_token_count(frames) + [IDS["audio_end"]]


def vision(token: str, grid: tuple[int, int, int]) -> list[int]:
    return [IDS["vision_start"]] + [IDS[token]] * (grid[0] * grid[1] * grid[2] // 4) + [IDS["vision_end"]]


# (name, ids, audio mel frames, image grids, video grids, seconds per grid, use_audio_in_video)
Grid = tuple[int, int, int]
CASES: list[tuple[str, list[int], list[int], list[Grid], list[Grid], list[float], bool]] = [
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


def av_case(frames: int, grid: tuple[int, int, int], spg: float) -> tuple[Any, ...]:
    ids = text(4) + processor_av_placeholder(audio_token_count(frames), grid, spg) + text(3)
    return (f"audio-in-video {frames} frames {grid} spg {spg}", ids, [frames], [], [grid], [spg], True)


AV_CASES = [
    av_case(530, (6, 4, 4), 1.0),
    av_case(310, (8, 4, 4), 1.0),
    av_case(1000, (3, 2, 4), 2.0),
    av_case(700, (4, 4, 2), 3.0),
    av_case(150, (1, 2, 2), 1.0),
]


@pytest.mark.parametrize("case", CASES + AV_CASES, ids=lambda c: c[0])
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
        audio_tokens=[audio_token_count(f) for f in frames],
        image_grids=images,
        video_grids=videos,
        seconds_per_grid=spg,
        use_audio_in_video=aiv,
    )
    assert torch.equal(got, expected[:, 0])
    # Decode continues at max + 1 on all axes: the reference's cache_len + rope_delta.
    cursor = PositionCursor(CFG, int(got.max()) + 1)
    for k in range(3):
        assert cursor.text(1)[:, 0].tolist() == [len(ids) + k + int(delta)] * 3


def test_pieces_pushed_live_equal_the_whole_prompt() -> None:
    """Audio block by block (50 tokens), video patch by patch: the same ids as the offline prompt."""
    frames, vgrid = 455, (3, 4, 6)
    ids = text(4) + audio(frames) + text(2) + vision("video", vgrid) + text(3)
    whole = rope_index(
        ids, TOK, CFG, audio_tokens=[audio_token_count(frames)], video_grids=[vgrid], seconds_per_grid=[1.0]
    )
    c = PositionCursor(CFG)
    parts = [c.text(5)]
    n = audio_token_count(frames)
    parts += [c.audio(min(50, n - s)) for s in range(0, n, 50)]
    parts += [c.text(4)]
    live = StreamingVideoPositions(c.next_id, 1.0)
    parts += [live.next_patch(c, (4, 6)) for _ in range(3)]
    parts += [c.text(4)]
    assert torch.equal(torch.cat(parts, dim=1), whole)


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
