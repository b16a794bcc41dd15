"""Test-only: prompt builders and reference checks the Qwen2.5-Omni and Qwen3-Omni TM-RoPE tests share
(test_tmrope.py, test_tmrope_qwen3.py); each family names its tiny token ids, audio token count and processor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from omni.model.tmrope import MultimodalTokenIds, PositionCursor, StreamingVideoPositions, TMRoPEConfig, rope_index

Grid = tuple[int, int, int]
# (name, ids, audio mel frames, image grids, video grids, seconds per grid, use_audio_in_video)
Case = tuple[str, list[int], list[int], list[Grid], list[Grid], list[float], bool]


@dataclass(frozen=True)
class Prompts:
    """Token id lists in one family's tiny vocabulary (`ids`: tests/model/omni_tiny.py or qwen3_tiny.py IDS)."""

    ids: dict[str, int]
    audio_tokens: Callable[[int], int]  # encoder tokens for a clip of n mel frames
    processor: str  # the transformers processor class whose video-with-audio placeholder is the reference
    processor_kwargs: dict[str, Any] = field(default_factory=dict)  # its timing arguments

    def text(self, n: int, base: int = 10) -> list[int]:
        return [base + i % 50 for i in range(n)]

    def audio(self, frames: int) -> list[int]:
        return [self.ids["audio_start"]] + [self.ids["audio"]] * self.audio_tokens(frames) + [self.ids["audio_end"]]

    def vision(self, token: str, grid: Grid) -> list[int]:
        n = grid[0] * grid[1] * grid[2] // 4
        return [self.ids["vision_start"]] + [self.ids[token]] * n + [self.ids["vision_end"]]

    def av_placeholder(self, n_audio: int, grid: Grid, spg: float) -> list[int]:
        """The reference processor's own video-with-audio placeholder, mapped to the tiny ids."""
        import transformers

        cls = getattr(transformers, self.processor)
        proc = SimpleNamespace(
            video_processor=SimpleNamespace(merge_size=2),
            audio_bos_token="B",
            audio_eos_token="E",
            video_token="V",
            audio_token="A",
        )
        proc.get_chunked_index = lambda idx, n: cls.get_chunked_index(proc, idx, n)
        text = cls.replace_video_with_audio_token(
            proc,
            {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [spg]},
            0,
            {"num_audio_tokens": [n_audio]},
            0,
            **self.processor_kwargs,
        )
        ids = self.ids
        table = {"B": ids["audio_start"], "E": ids["audio_end"], "V": ids["video"], "A": ids["audio"]}
        return [ids["vision_start"]] + [table[c] for c in text] + [ids["vision_end"]]

    def av_case(self, frames: int, grid: Grid, spg: float) -> Case:
        ids = self.text(4) + self.av_placeholder(self.audio_tokens(frames), grid, spg) + self.text(3)
        return (f"audio-in-video {frames} frames {grid} spg {spg}", ids, [frames], [], [grid], [spg], True)


def against_reference(
    ref: Any, case: Case, tok: MultimodalTokenIds, cfg: TMRoPEConfig, audio_tokens: Callable[[int], int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours [3, T], the reference's [3, T]) for `case`; asserts that decoding continues, as in the reference,
    at max + 1 on all axes (its cache_len + rope_delta)."""
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
        tok,
        cfg,
        audio_tokens=[audio_tokens(f) for f in frames],
        image_grids=images,
        video_grids=videos,
        seconds_per_grid=spg,
        use_audio_in_video=aiv,
    )
    cursor = PositionCursor(cfg, int(got.max()) + 1)
    for k in range(3):
        assert cursor.text(1)[:, 0].tolist() == [len(ids) + k + int(delta)] * 3
    return got, expected[:, 0]


def assert_live_pieces_equal_whole(
    p: Prompts, tok: MultimodalTokenIds, cfg: TMRoPEConfig, block_tokens: int, spg: float
) -> None:
    """Audio pushed block by block (`block_tokens` each), video patch by patch at `spg` seconds per temporal
    patch: the same ids as the offline prompt."""
    frames, vgrid = 455, (3, 4, 6)
    n = p.audio_tokens(frames)
    ids = p.text(4) + p.audio(frames) + p.text(2) + p.vision("video", vgrid) + p.text(3)
    whole = rope_index(ids, tok, cfg, audio_tokens=[n], video_grids=[vgrid], seconds_per_grid=[spg])
    c = PositionCursor(cfg)
    parts = [c.text(5)]
    parts += [c.audio(min(block_tokens, n - s)) for s in range(0, n, block_tokens)]
    parts += [c.text(4)]
    live = StreamingVideoPositions(c.next_id, spg)
    parts += [live.next_patch(c, (4, 6)) for _ in range(3)]
    parts += [c.text(4)]
    assert torch.equal(torch.cat(parts, dim=1), whole)
