"""TMRoPE: the Thinker's three-axis (temporal, height, width) position ids for text, audio, images and video.

Qwen2.5-Omni rules (shared/reference/qwen_omni.md section 1.4), all in integer ids:
* text and special tokens: one id each, the same on all three axes, consecutive;
* every piece starts at (max id of the previous piece) + 1, so after a multimodal segment text resumes
  above everything the segment used;
* audio: 25 ids per second of audio, one per 40-ms token, the same on all axes;
* image: t = start, h = start + merged row, w = start + merged column;
* video: like an image per temporal patch, with t = start + int(k * seconds_per_grid * 25) for patch k
  (at 2 fps a patch is 2 frames = 1 s, so t advances 25 per patch);
* video with its audio: both streams start at the same id; they are cut into 2-s chunks of temporal
  ids (50 ids) and laid out chunk by chunk, video first then audio; the two bos tokens share one id
  and the two eos tokens share one id.

Qwen3-Omni (`TMRoPEConfig(style="qwen3")`, section 2.4) keeps the text, audio and image rules with 13 ids per
second (one per 80-ms AuT token) and changes two things:
* video: temporal ids are start + k * seconds_per_grid * 13 without truncation (the reference keeps them as
  floats; we accept only grids whose ids are whole numbers, which 0.5, 1, 2 ... seconds per grid give);
* video with its audio: no chunks; the two token streams are merged in order of temporal id (video first on
  ties), the two bos tokens take two consecutive ids, and so do the two eos tokens.

`PositionCursor` hands out ids piece by piece for a live session (ids never depend on what comes later,
which is what lets audio blocks and video patches be prefilled while the user is still speaking);
`rope_index` computes the ids of a whole token sequence at once, for offline prompts and for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

STYLES = ("qwen2.5", "qwen3")


@dataclass(frozen=True)
class TMRoPEConfig:
    """Timing constants (thinker_config: position_id_per_seconds, seconds_per_chunk; vision merge size) and
    the model generation whose rules apply ("qwen2.5" or "qwen3")."""

    position_id_per_seconds: int = 25
    seconds_per_chunk: float = 2.0
    spatial_merge_size: int = 2
    style: str = "qwen2.5"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown TMRoPE style {self.style!r}; known: {', '.join(STYLES)}")

    def time_offsets(self, n_patches: int, seconds_per_grid: float) -> torch.Tensor:
        """[n_patches] temporal offsets of a video's patches under this style's rule."""
        return patch_time_offsets(
            n_patches, seconds_per_grid, self.position_id_per_seconds, exact=self.style == "qwen3"
        )

    @property
    def ids_per_chunk(self) -> int:
        """Temporal ids per interleaving chunk (25 * 2 = 50)."""
        return int(self.position_id_per_seconds * self.seconds_per_chunk)


def flat_positions(start: int, n: int) -> torch.Tensor:
    """[3, n] ids start .. start + n - 1 on all three axes (text, special tokens, audio)."""
    return (torch.arange(n, dtype=torch.long) + start).expand(3, n).clone()


def patch_time_offsets(
    n_patches: int, seconds_per_grid: float, ids_per_second: int, exact: bool = False
) -> torch.Tensor:
    """[n_patches] temporal offsets int(k * seconds_per_grid * ids_per_second), computed in float32 as
    the reference does (a float64 product could round differently for non-integral seconds_per_grid).

    exact (Qwen3-Omni): the reference does not truncate, so a product that is not a whole number would be a
    fractional position; that raises ValueError instead of silently differing."""
    k = torch.arange(n_patches, dtype=torch.float32)
    t = k * torch.tensor(seconds_per_grid, dtype=torch.float32) * ids_per_second
    if exact and not torch.equal(t, t.floor()):
        raise ValueError(
            f"{seconds_per_grid} s per temporal patch at {ids_per_second} ids/s gives fractional Qwen3-Omni "
            "temporal ids; sample the video so that seconds_per_grid * position_id_per_seconds is whole"
        )
    return t.long()


def vision_positions(start: int, grid: Sequence[int], time_offsets: torch.Tensor, merge: int) -> torch.Tensor:
    """[3, t * (h / merge) * (w / merge)] ids of an image/video grid (t, h, w) in 14-px patches; patch k of
    the t temporal patches gets temporal id start + time_offsets[k]. Order: patch, merged row, column."""
    t, h, w = (int(g) for g in grid)
    lh, lw = h // merge, w // merge
    tt = time_offsets.view(t, 1, 1).expand(t, lh, lw)
    hh = torch.arange(lh).view(1, lh, 1).expand(t, lh, lw)
    ww = torch.arange(lw).view(1, 1, lw).expand(t, lh, lw)
    return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + start


def chunk_ranges(offsets: Sequence[int] | torch.Tensor, ids_per_chunk: int) -> list[tuple[int, int]]:
    """Cut a non-decreasing sequence of temporal offsets into consecutive [start, end) index ranges.

    A new range begins at the first offset >= c * ids_per_chunk, c counting ranges from 1. c grows by one
    per cut even when offsets jump over several chunks (the reference's rule, kept so the interleave
    matches it for any seconds_per_grid); for audio and 2-fps video each range is exactly one 2-s chunk.
    """
    values = offsets.tolist() if isinstance(offsets, torch.Tensor) else list(offsets)
    out, begin, c = [], 0, 1
    for i, v in enumerate(values):
        if v >= c * ids_per_chunk:
            out.append((begin, i))
            begin, c = i, c + 1
    out.append((begin, len(values)))
    return out


@dataclass
class AVLayout:
    """Audio-in-video interleave: the order of the video and audio tokens of one segment and their ids.

    Qwen2.5: per chunk j, video tokens of chunk j, then audio tokens of chunk j. Qwen3: merged by temporal id.
    `end_id` is the max id of the last piece the reference lays out; the segment's eos tokens follow it.
    """

    positions: torch.Tensor  # [3, n_video + n_audio] in layout order
    is_video: torch.Tensor  # [n_video + n_audio] bool
    pieces: list[tuple[str, int, int]] = field(default_factory=list)  # ("video"|"audio", first, end) token ranges
    end_id: int = -1


def audio_in_video_layout(
    start: int, n_audio: int, grid: Sequence[int], seconds_per_grid: float, cfg: TMRoPEConfig
) -> AVLayout:
    """Positions of the video and audio tokens of one video-with-audio segment whose streams start at `start`."""
    t = int(grid[0])
    video = vision_positions(start, grid, cfg.time_offsets(t, seconds_per_grid), cfg.spatial_merge_size)
    audio = flat_positions(start, n_audio)
    if cfg.style == "qwen3":
        return _time_merged_layout(video, audio)
    v_chunks = chunk_ranges(video[0] - start, cfg.ids_per_chunk)
    a_chunks = chunk_ranges(audio[0] - start, cfg.ids_per_chunk)
    parts, kinds, pieces = [], [], []
    for j in range(max(len(v_chunks), len(a_chunks))):
        for kind, chunks, pos in (("video", v_chunks, video), ("audio", a_chunks, audio)):
            if j < len(chunks) and chunks[j][1] > chunks[j][0]:
                a, b = chunks[j]
                parts.append(pos[:, a:b])
                kinds.append(torch.full((b - a,), kind == "video"))
                pieces.append((kind, a, b))
    return AVLayout(torch.cat(parts, dim=1), torch.cat(kinds), pieces, int(parts[-1].max()))


def _time_merged_layout(video: torch.Tensor, audio: torch.Tensor) -> AVLayout:
    """Qwen3-Omni: video and audio tokens in order of temporal id, video first on ties.

    The reference appends one token at a time while both streams last, then the rest of the longer stream as
    one piece; the eos ids follow that last piece's max (or the last single token's when nothing is left).
    """
    vt, at = video[0].tolist(), audio[0].tolist()
    i = j = 0
    order: list[bool] = []
    while i < len(vt) and j < len(at):
        take_video = vt[i] <= at[j]
        order.append(take_video)
        i, j = (i + 1, j) if take_video else (i, j + 1)
    merged_end = len(order)
    order += [True] * (len(vt) - i) + [False] * (len(at) - j)
    is_video = torch.tensor(order, dtype=torch.bool)
    positions = torch.empty(3, len(order), dtype=torch.long)
    positions[:, is_video] = video
    positions[:, ~is_video] = audio
    last = positions[:, merged_end:] if merged_end < len(order) else positions[:, merged_end - 1 :]
    pieces: list[tuple[str, int, int]] = []
    counts = {"video": 0, "audio": 0}
    for v in order:
        kind = "video" if v else "audio"
        if pieces and pieces[-1][0] == kind:
            pieces[-1] = (kind, pieces[-1][1], pieces[-1][2] + 1)
        else:
            pieces.append((kind, counts[kind], counts[kind] + 1))
        counts[kind] += 1
    return AVLayout(positions, is_video, pieces, int(last.max()))


@dataclass
class PositionCursor:
    """Per-session position state: the id where the next piece starts (previous piece's max id + 1).

    It continues across turns and into decoding: a generated token is a one-token text piece.
    """

    cfg: TMRoPEConfig = field(default_factory=TMRoPEConfig)
    next_id: int = 0

    def place(self, pos: torch.Tensor) -> torch.Tensor:
        """Account for a piece whose ids [3, n] were computed elsewhere (a chunk of a live segment)."""
        if pos.shape[1]:
            self.next_id = int(pos.max()) + 1
        return pos

    def text(self, n: int) -> torch.Tensor:
        """[3, n] ids for n text (or special) tokens."""
        return self.place(flat_positions(self.next_id, n))

    def shared(self, n: int) -> torch.Tensor:
        """[3, n] n tokens sharing one id (the paired bos/eos tokens around a Qwen2.5 video with audio)."""
        return self.place(flat_positions(self.next_id, 1).expand(3, n).clone())

    def pair(self) -> torch.Tensor:
        """[3, 2] the two bos (or eos) tokens around a video with audio: one shared id (Qwen2.5), two
        consecutive ids (Qwen3)."""
        return self.shared(2) if self.cfg.style == "qwen2.5" else self.text(2)

    def audio(self, n_tokens: int) -> torch.Tensor:
        """[3, n] one id per audio token (40 ms Qwen2.5, 80 ms Qwen3); blocks pushed one after another stay
        consecutive."""
        return self.text(n_tokens)

    def image(self, grid: Sequence[int]) -> torch.Tensor:
        """Ids of an image grid (1, h, w); images use one second per temporal patch, as the reference."""
        offsets = patch_time_offsets(int(grid[0]), 1.0, self.cfg.position_id_per_seconds)
        return self.place(vision_positions(self.next_id, grid, offsets, self.cfg.spatial_merge_size))

    def video(self, grid: Sequence[int], seconds_per_grid: float) -> torch.Tensor:
        offsets = self.cfg.time_offsets(int(grid[0]), seconds_per_grid)
        return self.place(vision_positions(self.next_id, grid, offsets, self.cfg.spatial_merge_size))

    def audio_in_video(self, n_audio: int, grid: Sequence[int], seconds_per_grid: float) -> AVLayout:
        """A whole video-with-audio body (between the shared bos and eos ids)."""
        lay = audio_in_video_layout(self.next_id, n_audio, grid, seconds_per_grid, self.cfg)
        self.next_id = lay.end_id + 1  # the segment's eos follows the last piece laid out
        return lay


@dataclass
class StreamingVideoPositions:
    """Ids of a live video, temporal patch by temporal patch (its start fixed when the video begins)."""

    start: int
    seconds_per_grid: float
    n_patches: int = 0

    def next_patch(self, cursor: PositionCursor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Ids of the next temporal patch (grid (h, w) in 14-px patches); advances the cursor past it."""
        cfg = cursor.cfg
        k = self.n_patches
        offset = cfg.time_offsets(k + 1, self.seconds_per_grid)[k:]
        self.n_patches += 1
        return cursor.place(vision_positions(self.start, (1, *grid_hw), offset, cfg.spatial_merge_size))


@dataclass(frozen=True)
class MultimodalTokenIds:
    """Placeholder and boundary token ids (thinker_config: audio_token_index, ..., vision_end_token_id)."""

    audio: int
    image: int
    video: int
    audio_start: int
    audio_end: int
    vision_start: int
    vision_end: int


def rope_index(
    input_ids: Sequence[int] | torch.Tensor,
    ids: MultimodalTokenIds,
    cfg: TMRoPEConfig,
    audio_tokens: Sequence[int] = (),
    image_grids: Sequence[Sequence[int]] = (),
    video_grids: Sequence[Sequence[int]] = (),
    seconds_per_grid: Sequence[float] = (),
    use_audio_in_video: bool = False,
) -> torch.Tensor:
    """[3, L] TMRoPE ids of a whole prompt whose placeholders are already expanded.

    audio_tokens: encoder token count of each audio in prompt order (videos' own audio included when
    use_audio_in_video); grids in 14-px patches. Raises ValueError when the placeholders do not match.
    """
    toks = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    cursor = PositionCursor(cfg)
    out: list[torch.Tensor] = []
    audio_it, image_it, video_it = iter(audio_tokens), iter(image_grids), iter(video_grids)
    spg_it = iter(seconds_per_grid)
    i, n = 0, len(toks)
    media = {ids.audio, ids.image, ids.video}
    while i < n:
        j = i
        while j < n and toks[j] not in media:
            j += 1
        if j == n:
            out.append(cursor.text(n - i))
            break
        av = use_audio_in_video and toks[j] == ids.video and j >= 2 and toks[j - 1] == ids.audio_start
        bos = 2 if av else 1
        if j - i < bos:
            raise ValueError(f"placeholder at index {j} has no start token before it")
        if j - bos > i:
            out.append(cursor.text(j - bos - i))
        if av:
            out.append(cursor.pair())
            n_audio, grid, spg = next(audio_it), next(video_it), next(spg_it)
            lay = cursor.audio_in_video(n_audio, grid, spg)
            body = lay.positions.shape[1]
            _expect(toks[j : j + body], lay.is_video, ids, j)
            out.append(lay.positions)
            out.append(cursor.pair())
            i = j + body + 2
            continue
        out.append(cursor.text(1))
        if toks[j] == ids.audio:
            pos = cursor.audio(next(audio_it))
        elif toks[j] == ids.image:
            pos = cursor.image(next(image_it))
        else:
            pos = cursor.video(next(video_it), next(spg_it))
        found = _run_length(toks, j)
        if found != pos.shape[1]:
            raise ValueError(f"{found} placeholder tokens at index {j}, expected {pos.shape[1]}")
        out.append(pos)
        out.append(cursor.text(1))
        i = j + pos.shape[1] + 1
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


def _run_length(toks: list[int], at: int) -> int:
    """How many tokens equal to toks[at] follow from `at` on."""
    end = at
    while end < len(toks) and toks[end] == toks[at]:
        end += 1
    return end - at


def _expect(tokens: list[int], is_video: torch.Tensor, ids: MultimodalTokenIds, at: int) -> None:
    want = [ids.video if v else ids.audio for v in is_video.tolist()]
    if tokens != want:
        raise ValueError(f"video-with-audio placeholders at index {at} do not follow the audio/video interleave")
