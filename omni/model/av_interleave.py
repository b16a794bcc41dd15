"""Qwen2.5-Omni's live video with its audio (use_audio_in_video): the 2-s interleave, piece by piece.

TMRoPE lays such a video out in chunks of `ids_per_chunk` temporal ids (50 = 2 s): each chunk's video patches,
then its audio tokens; the audio keeps its own ids (start + j), the patches theirs (their time offsets). Live,
a piece goes in once its place is settled: a chunk's audio once no more patch can fall into that chunk (the next
patch's time offset is known before it arrives), the next chunk's patches after that audio. `AVInterleave` holds
the encoded pieces waiting for their turn; `ThinkerSession` (omni/model/thinker_session.py) encodes and feeds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from omni.model.tmrope import PositionCursor, StreamingVideoPositions, TMRoPEConfig, flat_positions, patch_time_offsets


@dataclass
class AVInterleave:
    """One live video-with-audio segment: encoded pieces waiting for their turn in the 2-s interleave."""

    video: StreamingVideoPositions
    audio_start: int
    grid_hw: tuple[int, int]
    rope: TMRoPEConfig
    video_queue: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (chunk index, one patch's tokens)
    audio_queue: list[torch.Tensor] = field(default_factory=list)  # tokens of the audio chunks not yet fed
    audio_sent: int = 0  # audio tokens prefilled so far
    chunk: int = 0  # the chunk being laid out
    phase: str = "video"  # which half of `chunk` is being laid out
    cuts: int = 0  # chunk index of the last encoded video patch
    video_done: bool = False
    audio_done: bool = False

    @property
    def n_patches(self) -> int:
        """Video patches encoded so far, fed or waiting."""
        return self.video.n_patches + len(self.video_queue)

    def add_patch(self, tokens: torch.Tensor) -> None:
        """The tokens [n, C] of the next temporal patch (none: nothing)."""
        if tokens.shape[0] == 0:
            return
        k = self.n_patches  # this patch's index
        if k and self._starts_next_chunk(k):
            self.cuts += 1
        self.video_queue.append((self.cuts, tokens))

    def add_audio(self, tokens: torch.Tensor) -> None:
        """Audio tokens [n, C] of whole 2-s blocks (whole 50-id chunks), queued one chunk a piece."""
        per = self.rope.ids_per_chunk
        for i in range(0, tokens.shape[0], per):
            self.audio_queue.append(tokens[i : i + per])

    def add_audio_tail(self, tokens: torch.Tensor) -> None:
        """The partial last audio block's tokens [n, C] (none: nothing), queued as one piece."""
        if tokens.shape[0]:
            self.audio_queue.append(tokens)

    def finish(self) -> None:
        """Both streams have ended: what is queued goes in as the last chunks."""
        self.video_done = self.audio_done = True

    def ready(self, cursor: PositionCursor) -> Iterator[tuple[Literal["audio", "video"], torch.Tensor, torch.Tensor]]:
        """Every piece whose place is settled, chunk by chunk, video then audio: (kind, tokens [n, C], positions
        [3, n] taken from `cursor`). Feed each before taking the next."""
        while True:
            if self.phase == "video":
                while self.video_queue and self.video_queue[0][0] == self.chunk:
                    _, tokens = self.video_queue.pop(0)
                    yield "video", tokens, self.video.next_patch(cursor, self.grid_hw)
                if not self._video_chunk_complete():
                    return
                self.phase = "audio"
            if self.audio_queue:
                tokens = self.audio_queue.pop(0)
                start = self.audio_start + self.audio_sent
                yield "audio", tokens, cursor.place(flat_positions(start, tokens.shape[0]))
                self.audio_sent += tokens.shape[0]
            elif not self.audio_done:
                return
            if self.video_done and self.audio_done and not self.video_queue and not self.audio_queue:
                return
            self.chunk += 1
            self.phase = "video"

    def _starts_next_chunk(self, k: int) -> bool:
        """Whether patch k's time offset lies past the chunk of the last encoded patch."""
        offsets = patch_time_offsets(k + 1, self.video.seconds_per_grid, self.rope.position_id_per_seconds)
        return int(offsets[k]) >= (self.cuts + 1) * self.rope.ids_per_chunk

    def _video_chunk_complete(self) -> bool:
        """No more video patches can fall into chunk `self.chunk`."""
        if self.video_done or self.video_queue:
            return self.video_done or self.video_queue[0][0] > self.chunk
        k = self.video.n_patches  # the next patch to arrive, predicted: its time offset is known in advance
        if k == 0:
            return False
        return self.cuts + int(self._starts_next_chunk(k)) > self.chunk
