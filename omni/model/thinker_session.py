"""One conversation with the Qwen2.5-Omni Thinker, prefilled piece by piece while the user is still talking.

`ThinkerSession` is the Qwen2.5-Omni `ConversationSession` (omni/model/conversation.py: cache, cursor, turns,
decoding, rollback): it adds the encoder streaming states and feeds each completed piece into the cache at once: a
completed 2-s audio block (50 tokens), a completed temporal patch of video (2 frames = 1 s), text, and a live
video with its audio in the 2-s interleave. Because every piece's positions depend only on what came before, the
cache then holds exactly what `Thinker.prompt_logits` computes for the whole prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omni.model.av_interleave import AVInterleave
from omni.model.conversation import ConversationSession
from omni.model.encoders.audio_encoder import AudioEncoderState
from omni.model.encoders.audio_frontend import LogMelState
from omni.model.encoders.vision_encoder import VisionEncoderState
from omni.model.encoders.vision_preprocess import VisionInputError
from omni.model.lm.batch import BatchedDecoder
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import SPEECH_SYSTEM_PROMPT, PromptBuilder
from omni.model.thinker import Thinker
from omni.model.tmrope import StreamingVideoPositions


@dataclass
class _AudioSegment:
    """The open `push_audio` segment: its log-mel before the 80 dB floor and where each prefilled block starts.

    Offline, the floor sits 80 dB below the loudest value of the whole clip; live, only the loudest so far is
    known. A block prefilled while the turn was quiet is therefore floored again, re-encoded and prefilled again
    (with every block after it, whose cache entries attend to it) when a louder part raises the peak enough to
    change it. Quiet lead-ins make this happen near a turn's start; later blocks rarely change. Kept until
    `end_audio`: 100 KB of log-mel per 2-s block (128 bins x 200 frames x 4 bytes).
    """

    mel: LogMelState
    blocks: list[torch.Tensor]  # [n_mels, 200] log10 mel of each complete block
    pending: torch.Tensor  # [n_mels, < 200] log10 mel of the block being filled
    marks: list[tuple[int, int]]  # (cache length, cursor id) where each prefilled block starts
    floors: list[tuple[float, float]]  # per prefilled block: (its quietest value, the peak it was floored at)


class ThinkerSession(ConversationSession):
    """One conversation with the Thinker: bounded KV cache, TMRoPE cursor, encoder streaming states.

    Typical turn: `start_user_turn()`, then any of `add_text`, `begin_audio`/`push_audio`/`end_audio`,
    `add_image`, `begin_video`/`push_video_frame`/`end_video`, `begin_av`/`push_av_audio`/`push_av_frame`/
    `end_av`; then `end_user_turn()` and `generate(...)`. Every push prefills at once what it completes.
    Not thread-safe: drive it from one worker.
    """

    def __init__(
        self,
        thinker: Thinker,
        prompt: PromptBuilder,
        system_prompt: str | None = SPEECH_SYSTEM_PROMPT,
        cache: CacheConfig | None = None,
        tokenizer: TextTokenizer | None = None,
        pool: BatchedDecoder | None = None,
        sid: int | None = None,
    ) -> None:
        """`tokenizer`: needed by `respond` only (text out). `pool`, `sid`: a row of a pool of the Thinker's
        decoder as the session's cache, so its decode steps can batch (ConversationSession)."""
        self.thinker: Thinker = thinker
        self._segment: _AudioSegment | None = None
        self._mel: LogMelState | None = None  # the video-with-audio stream's front end
        self._audio: AudioEncoderState | None = None
        self._video: tuple[VisionEncoderState, StreamingVideoPositions] | None = None
        self._av: AVInterleave | None = None
        super().__init__(thinker, prompt, thinker.cfg.rope, cache, tokenizer, pool=pool, sid=sid,
                         system_prompt=system_prompt)

    # ---- prefill primitives ------------------------------------------------------------------------------

    def _shared_special(self, ids: Sequence[int]) -> None:  # the paired bos/eos of a video with audio
        x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
        self._feed(x, self.cursor.shared(len(ids)))

    def _segment_open(self) -> bool:
        return self._audio is not None or self._video is not None or self._av is not None

    def _settled_length(self) -> int:
        seg = self._segment  # any prefilled block of an audio segment may be floored again until its end
        return seg.marks[0][0] if seg is not None and seg.marks else self.state.cache.length

    # ---- audio ---------------------------------------------------------------------------------------------

    def begin_audio(self) -> None:
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.audio_start])
        self._encoded.segment_start = self.cursor.next_id
        empty = torch.zeros(self.thinker.mel.n_mels, 0, device=self.thinker.device)
        self._segment = _AudioSegment(self.thinker.mel.init_state(self.thinker.device), [], empty, [], [])
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)

    def push_audio(self, pcm16k: torch.Tensor) -> int:
        """16 kHz mono samples; prefills every 2-s block they complete (and again, floored as offline, any
        earlier block a louder part changes). Returns how many audio tokens the cache gained."""
        seg = self._segment
        if seg is None or self._audio is None:
            raise RuntimeError("push_audio() outside begin_audio()/end_audio()")
        if self._audio.n_blocks or self._audio.n_pending:
            raise RuntimeError("push_audio() after push_audio_features() in one audio segment")
        log10 = self.thinker.mel.step_log10(seg.mel, pcm16k.to(self.thinker.device))
        return self._prefill_segment(seg, log10)

    def push_audio_features(self, mel: torch.Tensor) -> int:
        """Log-mel frames [n_mels, t] (when the caller runs the front-end itself)."""
        if self._audio is None:
            raise RuntimeError("audio pushed outside begin_audio()/end_audio()")
        if self._segment is not None and self._segment.mel.n_seen:
            raise RuntimeError("push_audio_features() after push_audio() in one audio segment")
        tokens = self.thinker.audio_tower.step(self._audio, mel.to(self.thinker.device)).to(self.thinker.lm.dtype)
        for i in range(0, tokens.shape[0], self.cursor.cfg.ids_per_chunk):  # one piece per 2-s block
            block = tokens[i : i + self.cursor.cfg.ids_per_chunk]
            self._feed_encoded("audio", block, self.cursor.audio(block.shape[0]))
        return tokens.shape[0]

    def end_audio(self) -> int:
        """Encode the partial last block, prefill it and <|audio_eos|>. Returns how many audio tokens the
        cache gained."""
        if self._audio is None:
            raise RuntimeError("end_audio() without begin_audio()")
        seg, n = self._segment, 0
        if seg is not None and seg.mel.n_seen:
            n = self._prefill_segment(seg, self.thinker.mel.flush_log10(seg.mel), final=True)
        else:
            tokens = self.thinker.audio_tower.flush(self._audio).to(self.thinker.lm.dtype)
            self._feed_encoded("audio", tokens, self.cursor.audio(tokens.shape[0]))
            n = tokens.shape[0]
        self._segment = self._audio = None
        self.feed_ids([self.thinker.cfg.tokens.audio_end])
        return n

    def _prefill_segment(self, seg: _AudioSegment, log10: torch.Tensor, final: bool = False) -> int:
        """Take new log10 frames [n_mels, t]; prefill every complete block (at the end also the partial last
        one) floored at the peak so far, after rolling back to the first prefilled block the peak changed."""
        before = self.state.cache.length
        block = self.thinker.audio_tower.cfg.block_frames
        peak = seg.mel.running_max
        pending = torch.cat([seg.pending, log10], dim=1)  # the < 200 frames left over, then the new ones
        while pending.shape[1] >= block:
            seg.blocks.append(pending[:, :block])
            pending = pending[:, block:]
        seg.pending = pending
        # a block changes when the floor (peak - 8 log10 units = 80 dB) rises past its quietest value
        changed = [k for k, (low, used) in enumerate(seg.floors) if used < peak and low < peak - 8.0]
        if changed:
            self._roll_back(*seg.marks[changed[0]])
            del seg.marks[changed[0] :], seg.floors[changed[0] :]
        last = seg.blocks + ([seg.pending] if final and seg.pending.shape[1] else [])
        for frames in last[len(seg.marks) :]:
            seg.marks.append((self.state.cache.length, self.cursor.next_id))
            seg.floors.append((float(frames.min()), peak))
            tokens = self.thinker.audio_tower.encode_blocks(self.thinker.mel.finish(frames, peak)[None])[0]
            tokens = tokens.to(self.thinker.lm.dtype)
            self._feed_encoded("audio", tokens, self.cursor.audio(tokens.shape[0]))
        return self.state.cache.length - before

    # ---- images and video ------------------------------------------------------------------------------------

    def add_image(self, patches: torch.Tensor, grid: Sequence[int]) -> None:
        """A preprocessed image (see vision_preprocess.preprocess_image) with its bos/eos tokens. Its features are
        kept for memory (`take_encoded`) as a video patch of one frame at offset 0."""
        self._check_idle()
        tokens = self.thinker.encode_vision(patches, grid).to(self.thinker.lm.dtype)
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        positions = self.cursor.image(grid)
        self._encoded.segment_start = int(positions[0].min())
        self._feed_encoded("video", tokens, positions, self._merged((int(grid[1]), int(grid[2]))))
        self.feed_ids([t.vision_end])

    def add_image_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> None:
        """Vision features [n, C] of an image grid (1, h, w) in 14-px patches (n = h * w / merge^2), with
        their bos/eos tokens: an encoded image, or a recalled frame."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        self._feed(tokens.to(self.thinker.lm.dtype), self.cursor.image(grid))
        self.feed_ids([t.vision_end])

    def add_audio_tokens(self, tokens: torch.Tensor) -> None:
        """Audio features [n, C] between <|audio_bos|> and <|audio_eos|> (recalled audio), one id per token."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.audio_start])
        self._feed(tokens.to(self.thinker.lm.dtype), self.cursor.audio(tokens.shape[0]))
        self.feed_ids([t.audio_end])

    def begin_video(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video of normalised frames height x width (multiples of 28 px), 2 / seconds_per_grid fps."""
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.vision_start])
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._encoded.segment_start = self.cursor.next_id
        self._video = (enc, StreamingVideoPositions(self.cursor.next_id, seconds_per_grid))

    def push_video_frame(self, frame: torch.Tensor) -> int:
        """One normalised frame [3, H, W]; every second frame completes a temporal patch, prefilled at once."""
        if self._video is None:
            raise RuntimeError("push_video_frame() outside begin_video()/end_video()")
        enc, pos = self._video
        return self._feed_patch(enc, pos, self.thinker.visual.step(enc, frame.to(self.thinker.device)))

    def end_video(self) -> None:
        if self._video is None:
            raise RuntimeError("end_video() without begin_video()")
        enc, pos = self._video
        self._feed_patch(enc, pos, self.thinker.visual.flush(enc))
        if pos.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_video()")
        self._video = None
        self.feed_ids([self.thinker.cfg.tokens.vision_end])

    def _feed_patch(self, enc: VisionEncoderState, pos: StreamingVideoPositions, tokens: torch.Tensor) -> int:
        if tokens.shape[0] == 0:
            return 0
        grid = (enc.layout.gh, enc.layout.gw)
        x = tokens.to(self.thinker.lm.dtype)
        self._feed_encoded("video", x, pos.next_patch(self.cursor, grid), self._merged(grid))
        return tokens.shape[0]

    # ---- video with its audio (2-s interleave) ---------------------------------------------------------------

    def begin_av(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video whose audio track is interleaved with it (use_audio_in_video)."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self._shared_special([t.vision_start, t.audio_start])
        start = self._encoded.segment_start = self.cursor.next_id
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._video = (enc, StreamingVideoPositions(start, seconds_per_grid))
        self._mel = self.thinker.mel.init_state(self.thinker.device)
        self._audio = self.thinker.audio_tower.init_state(self.thinker.device)
        p = self.thinker.cfg.vision.patch_size
        self._av = AVInterleave(self._video[1], start, (height // p, width // p), self.cursor.cfg)

    def push_av_frame(self, frame: torch.Tensor) -> None:
        av, (enc, _) = self._need_av()
        tokens = self.thinker.visual.step(enc, frame.to(self.thinker.device))
        av.add_patch(tokens.to(self.thinker.lm.dtype))
        self._pump(av)

    def push_av_audio(self, pcm16k: torch.Tensor) -> None:
        av, _ = self._need_av()
        assert self._mel is not None
        self._queue_audio(av, self.thinker.mel.step(self._mel, pcm16k.to(self.thinker.device)))
        self._pump(av)

    def push_av_audio_features(self, mel: torch.Tensor) -> None:
        av, _ = self._need_av()
        self._queue_audio(av, mel.to(self.thinker.device))
        self._pump(av)

    def end_av(self) -> None:
        av, (enc, _) = self._need_av()
        assert self._mel is not None and self._audio is not None
        av.add_patch(self.thinker.visual.flush(enc).to(self.thinker.lm.dtype))
        if self._mel.n_seen:
            self._queue_audio(av, self.thinker.mel.flush(self._mel))
        av.add_audio_tail(self.thinker.audio_tower.flush(self._audio).to(self.thinker.lm.dtype))
        if av.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_av()")
        av.finish()
        self._pump(av)
        self._video = self._av = None
        self._mel = self._audio = None
        t = self.thinker.cfg.tokens
        self._shared_special([t.audio_end, t.vision_end])

    def _need_av(self) -> tuple[AVInterleave, tuple[VisionEncoderState, StreamingVideoPositions]]:
        if self._av is None or self._video is None:
            raise RuntimeError("video-with-audio input outside begin_av()/end_av()")
        return self._av, self._video

    def _queue_audio(self, av: AVInterleave, mel: torch.Tensor) -> None:
        assert self._audio is not None
        tokens = self.thinker.audio_tower.step(self._audio, mel)  # whole 2-s blocks = whole 50-id chunks
        av.add_audio(tokens.to(self.thinker.lm.dtype))

    def _pump(self, av: AVInterleave) -> None:
        """Prefill everything whose place in the interleave is settled (av_interleave.py)."""
        for kind, tokens, positions in av.ready(self.cursor):
            grid = self._merged(av.grid_hw) if kind == "video" else (0, 0)
            self._feed_encoded(kind, tokens, positions, grid)
