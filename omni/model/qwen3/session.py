"""One conversation with the Qwen3-Omni Thinker, prefilled piece by piece.

Shares `ConversationSession` (omni/model/conversation.py) with `ThinkerSession` (turns, decoding, rollback, the
encoder outputs kept for memory, the recalled slot) and differs where Qwen3-Omni differs in what a piece is:
* audio: the AuT encoder attends inside windows of `n_window_infer` mel frames (8 s released) that never see
  each other, so a window's tokens are final once its frames are. The log-mel is the processor's one-clip
  features (`LogMel.unpadded`: reflect padding at both ends, 80 dB floor under the whole clip's peak). A
  window is prefilled as soon as its frames no longer depend on the clip's end (their STFT windows lie inside
  the audio so far), floored at the peak so far; when a louder part later raises the floor past a prefilled
  window's quietest value, the session rolls back to that window and prefills it again (as ThinkerSession does
  for Qwen2.5's 2-s blocks). `end_audio` encodes the last partial window. The cache then holds exactly what
  `Qwen3Thinker.prompt_forward` computes for the whole prompt.
* images and whole videos carry DeepStack residuals (`LayerAdds`) into their prefill.

Video arrives whole (`add_video`) or frame by frame (`begin_video`/`push_video_frame`/`end_video`: each
temporal patch of 2 frames is encoded and prefilled as it completes).

A video with its audio (use_audio_in_video: `begin_av`/`push_av_audio` or `push_av_audio_features`/
`push_av_frame`/`end_av`) is laid out as Qwen3-Omni's TM-RoPE merges the two streams (omni/model/tmrope.py): both
start at the id after <|vision_start|><|audio_start|>, audio token j has id start + j, temporal patch k has
start + k * seconds_per_grid * 13, and the tokens go in order of temporal id, a patch before the audio tokens
of its own id. Patch k therefore goes in as soon as the audio before its id is in; audio token j as soon as
every patch of id <= start + j is in (the next patch's id is known before it arrives). Audio windows are final
as for an audio segment; when a louder part re-floors a window whose tokens were fed, the session rolls back to
the first stretch of audio that held any of them and feeds the stretch, the patches after it (kept) and the new
audio again. The end tokens take the two ids after the last run of one kind (what the reference does: the
tokens left once the other stream ran out are one piece, and the eos ids follow that piece's largest id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from omni.model.conversation import ConversationSession
from omni.model.encoders.audio_frontend import HOP_LENGTH, AudioInputError
from omni.model.encoders.qwen3_vision import Qwen3VisionOutput, Qwen3VisionState
from omni.model.encoders.vision_preprocess import VisionInputError
from omni.model.lm.batch import BatchedDecoder
from omni.model.lm.decoder import LayerAdds
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import PromptBuilder
from omni.model.qwen3.thinker import Qwen3Thinker
from omni.model.tmrope import StreamingVideoPositions, flat_positions

_STFT_HALF = 200  # samples each side of a mel frame's centre (n_fft / 2)
_FLOOR = 8.0  # the 80 dB floor in log10 units


@dataclass
class _AudioTurn:
    """The open audio (or the open video-with-audio's audio): its samples so far and, per encoded window, its
    (quietest log10 value, the peak it was floored at) and token count; an audio segment also keeps where each
    window was fed (cache length, cursor id)."""

    pcm: list[torch.Tensor] = field(default_factory=list)
    floors: list[tuple[float, float]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    marks: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _AVMark:
    """The state before one stretch of a video-with-audio's audio tokens [audio_fed, audio_end) was fed."""

    audio_fed: int
    audio_end: int
    patches_fed: int
    cache_length: int
    next_id: int
    run: tuple[str, int]


@dataclass
class _AVStream:
    """The open video with its audio: encoded patches (kept: an audio rollback feeds them again), audio tokens
    known so far, how much of each is fed, and the trailing run of one kind (its kind and largest id)."""

    video: StreamingVideoPositions  # its n_patches: patches fed
    enc: Qwen3VisionState
    audio: torch.Tensor  # [n, C]
    pcm: _AudioTurn = field(default_factory=_AudioTurn)
    mel: torch.Tensor | None = None  # log-mel frames of the window being filled (push_av_audio_features)
    mel_frames: int = 0  # log-mel frames pushed
    patches: list[Qwen3VisionOutput] = field(default_factory=list)
    audio_fed: int = 0
    marks: list[_AVMark] = field(default_factory=list)
    run: tuple[str, int] = ("", -1)
    video_done: bool = False
    audio_done: bool = False


class Qwen3ThinkerSession(ConversationSession):
    """One conversation: bounded KV cache, TM-RoPE cursor (Qwen3 rules), open audio or video segment.

    Turn: `start_user_turn()`, any of `add_text`, `begin_audio`/`push_audio`/`end_audio`, `add_image`,
    `add_video`, `begin_video`/`push_video_frame`/`end_video`, `begin_av`/`push_av_audio`/`push_av_frame`/
    `end_av`; then `end_user_turn()` and `generate(...)` or `respond(...)`. Not thread-safe."""

    def __init__(
        self,
        thinker: Qwen3Thinker,
        prompt: PromptBuilder,
        system_prompt: str | None = None,
        cache: CacheConfig | None = None,
        tokenizer: TextTokenizer | None = None,
        tap_layer: int | None = None,
        pool: BatchedDecoder | None = None,
        sid: int | None = None,
    ) -> None:
        """`tap_layer` k (the Talker's accept_hidden_layer): every fed piece's input embeddings and the hidden
        states entering layer k are kept for `take_taps` (prefills then run the per-layer path). `pool`, `sid`: a
        row of a pool of the Thinker's decoder as the session's cache, so its reply's decode steps can run batched
        with other sessions' (ConversationSession)."""
        self.thinker: Qwen3Thinker = thinker
        self._audio: _AudioTurn | None = None
        self._video: tuple[Qwen3VisionState, StreamingVideoPositions] | None = None
        self._av: _AVStream | None = None
        super().__init__(thinker, prompt, thinker.cfg.rope, cache, tokenizer, tap_layer, pool=pool, sid=sid,
                         system_prompt=system_prompt)

    def _segment_open(self) -> bool:
        return self._audio is not None or self._video is not None or self._av is not None

    def _settled_length(self) -> int:
        """Any fed window of the open audio may be floored again until its end, and with it all fed after it."""
        if self._audio is not None and self._audio.marks:
            return self._audio.marks[0][0]
        if self._av is not None and self._av.pcm.pcm and self._av.marks:
            return self._av.marks[0].cache_length
        return self.state.cache.length

    # ---- recalled features (memory) ------------------------------------------------------------------------

    def add_audio_tokens(self, tokens: torch.Tensor) -> None:
        """Audio features [n, C] between <|audio_start|> and <|audio_end|> (recalled audio), one id per token."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.audio_start])
        self._feed(tokens, self.cursor.audio(tokens.shape[0]))
        self.feed_ids([t.audio_end])

    def add_image_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> None:
        """Vision features [n, C] of an image grid (1, h, w) in 16-px patches, with their start/end tokens and no
        DeepStack residuals (a recalled frame keeps only its merged tokens)."""
        self._check_idle()
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        self._feed(tokens, self.cursor.image(grid))
        self.feed_ids([t.vision_end])

    # ---- audio -------------------------------------------------------------------------------------------

    def begin_audio(self) -> None:
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.audio_start])
        self._encoded.segment_start = self.cursor.next_id
        self._audio = _AudioTurn()

    def push_audio(self, pcm16k: torch.Tensor) -> int:
        """16 kHz mono samples; prefills every attention window they make final. Returns how many audio tokens
        the cache gained (negative when a louder part made earlier windows be prefilled again, net)."""
        seg = self._need_audio()
        seg.pcm.append(pcm16k.reshape(-1).float().to(self.thinker.device))
        return self._prefill_audio(seg, final=False)

    def end_audio(self) -> int:
        """Prefill the rest of the clip (the last partial window) and <|audio_end|>; returns the tokens gained."""
        seg = self._need_audio()
        n = self._prefill_audio(seg, final=True)
        self._audio = None
        self.feed_ids([self.thinker.cfg.tokens.audio_end])
        return n

    def add_audio(self, pcm16k: torch.Tensor) -> int:
        """A whole clip (16 kHz mono) between its start and end tokens; returns its token count."""
        self.begin_audio()
        return self.push_audio(pcm16k) + self.end_audio()

    def _prefill_audio(self, seg: _AudioTurn, final: bool) -> int:
        before = self.state.cache.length
        k0, _, windows = self._audio_windows(seg, final)
        if k0 < len(seg.marks):
            self._roll_back(*seg.marks[k0])
            del seg.marks[k0:]
        for tokens in windows:
            seg.marks.append((self.state.cache.length, self.cursor.next_id))
            self._feed_encoded("audio", tokens, self.cursor.audio(tokens.shape[0]))
        return self.state.cache.length - before

    @torch.inference_mode()
    def _audio_windows(self, seg: _AudioTurn, final: bool) -> tuple[int, int, list[torch.Tensor]]:
        """Encode the windows the samples so far make final, floored at the peak so far (at the end also the
        last partial one): (the first window encoded, its first token's index, the tokens of each window from it
        on). A window encoded before is encoded again when the peak has risen past its floor."""
        pcm = torch.cat(seg.pcm) if seg.pcm else torch.zeros(0, device=self.thinker.device)
        if final and pcm.numel() <= _STFT_HALF:
            raise AudioInputError(f"audio of {pcm.numel()} samples is too short (needs > {_STFT_HALF}, 12.5 ms)")
        if pcm.numel() <= _STFT_HALF:
            return len(seg.sizes), sum(seg.sizes), []
        log10 = self.thinker.mel.unpadded_log10(pcm)  # [n_mels, n // 160]
        # frames whose STFT window lies inside the samples so far keep their values when more audio arrives
        stable = log10.shape[1] if final else max(0, (pcm.numel() - _STFT_HALF) // HOP_LENGTH + 1)
        stable = min(stable, log10.shape[1])
        if stable == 0:
            return len(seg.sizes), sum(seg.sizes), []
        peak = float(log10[:, :stable].max())
        changed = [k for k, (low, used) in enumerate(seg.floors) if used < peak and low < peak - _FLOOR]
        k0 = changed[0] if changed else len(seg.floors)
        del seg.floors[k0:], seg.sizes[k0:]
        tower = self.thinker.audio_tower
        win, n_frames = tower.cfg.n_window_infer, log10.shape[1]
        n_windows = -(-n_frames // win) if final else stable // win
        out = []
        for k in range(k0, n_windows):
            frames = log10[:, k * win : min((k + 1) * win, n_frames)]
            seg.floors.append((float(frames.min()), peak))
            mel = self.thinker.mel.finish(frames, peak)
            tokens = tower.encode_windows(mel[None])[0] if frames.shape[1] == win else tower.encode_last_window(
                mel, n_frames)
            out.append(tokens.to(self.thinker.lm.dtype))
            seg.sizes.append(tokens.shape[0])
        return k0, sum(seg.sizes[:k0]), out

    def _need_audio(self) -> _AudioTurn:
        if self._audio is None:
            raise RuntimeError("audio pushed outside begin_audio()/end_audio()")
        return self._audio

    # ---- images and video ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def add_image(self, patches: torch.Tensor, grid: Sequence[int]) -> None:
        """A preprocessed image (Qwen3Thinker.image_input) with its start/end tokens and DeepStack residuals."""
        self._check_idle()
        self._add_vision(self.thinker.encode_vision(patches, grid), self.cursor.image, grid)

    @torch.inference_mode()
    def add_video(self, patches: torch.Tensor, grid: Sequence[int], seconds_per_grid: float = 1.0) -> None:
        """A whole preprocessed video (vision_preprocess.preprocess_video with Qwen3 settings)."""
        self._check_idle()
        out = self.thinker.encode_vision(patches, grid)
        self._add_vision(out, lambda g: self.cursor.video(g, seconds_per_grid), grid)

    def begin_video(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video of normalised frames height x width (multiples of 32 px), 2 / seconds_per_grid fps."""
        self._check_idle()
        self.cursor.cfg.time_offsets(2, seconds_per_grid)  # fractional temporal ids: refused before any feed
        self.feed_ids([self.thinker.cfg.tokens.vision_start])
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._encoded.segment_start = self.cursor.next_id
        self._video = (enc, StreamingVideoPositions(self.cursor.next_id, seconds_per_grid))

    @torch.inference_mode()
    def push_video_frame(self, frame: torch.Tensor) -> int:
        """One normalised frame [3, H, W]; every second frame completes a temporal patch, prefilled at once with
        its DeepStack residuals. Returns the tokens prefilled."""
        if self._video is None:
            raise RuntimeError("push_video_frame() outside begin_video()/end_video()")
        enc, pos = self._video
        out = self.thinker.visual.step(enc, frame.to(self.thinker.device))
        return 0 if out is None else self._feed_patch(enc, pos, out)

    @torch.inference_mode()
    def end_video(self) -> None:
        """An odd last frame fills its temporal patch (as the processor pads); then <|vision_end|>."""
        if self._video is None:
            raise RuntimeError("end_video() without begin_video()")
        enc, pos = self._video
        out = self.thinker.visual.flush(enc)
        if out is not None:
            self._feed_patch(enc, pos, out)
        if pos.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_video()")
        self._video = None
        self.feed_ids([self.thinker.cfg.tokens.vision_end])

    def _feed_patch(self, enc: Qwen3VisionState, pos: StreamingVideoPositions, out: Qwen3VisionOutput) -> int:
        """One temporal patch at its ids, with its DeepStack residuals; returns its token count."""
        grid = (enc.layout.gh, enc.layout.gw)
        positions = pos.next_patch(self.cursor, grid)
        n = out.tokens.shape[0]
        self._feed_encoded("video", out.tokens, positions, self._merged(grid), self._deepstack(out))
        return n

    def _deepstack(self, out: Qwen3VisionOutput) -> LayerAdds:
        n = out.tokens.shape[0]
        return LayerAdds(torch.ones(n, dtype=torch.bool, device=self.thinker.device),
                         [d.to(self.thinker.lm.dtype) for d in out.deepstack])

    def _add_vision(
        self, out: Qwen3VisionOutput, place: Callable[[Sequence[int]], torch.Tensor], grid: Sequence[int]
    ) -> None:
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        self._feed(out.tokens, place(grid), self._deepstack(out))
        self.feed_ids([t.vision_end])

    # ---- video with its audio (merged by temporal id) -------------------------------------------------------

    def begin_av(self, height: int, width: int, seconds_per_grid: float = 1.0) -> None:
        """A live video (normalised frames height x width, multiples of 32 px, 2 / seconds_per_grid fps) whose
        audio track is interleaved with it (use_audio_in_video). ValueError when seconds_per_grid gives
        fractional temporal ids (see omni/model/tmrope.py)."""
        self._check_idle()
        self.cursor.cfg.time_offsets(2, seconds_per_grid)
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start, t.audio_start])  # Qwen3: two consecutive ids, as text (cursor.pair)
        start = self._encoded.segment_start = self.cursor.next_id
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        empty = torch.zeros(0, self.thinker.lm.cfg.hidden_size, device=self.thinker.device, dtype=self.thinker.lm.dtype)
        self._av = _AVStream(StreamingVideoPositions(start, seconds_per_grid), enc, empty)

    @torch.inference_mode()
    def push_av_frame(self, frame: torch.Tensor) -> None:
        """One normalised frame [3, H, W]; a completed temporal patch goes in once the audio before it has."""
        av = self._need_av()
        out = self.thinker.visual.step(av.enc, frame.to(self.thinker.device))
        if out is not None:
            av.patches.append(out)
        self._pump_av(av)

    @torch.inference_mode()
    def push_av_audio(self, pcm16k: torch.Tensor) -> None:
        """16 kHz mono samples of the video's audio; each window they make final goes in with the patches."""
        av = self._need_av()
        if av.mel_frames:
            raise RuntimeError("push_av_audio() after push_av_audio_features() in one video")
        av.pcm.pcm.append(pcm16k.reshape(-1).float().to(self.thinker.device))
        self._av_audio(av, *self._audio_windows(av.pcm, final=False))

    @torch.inference_mode()
    def push_av_audio_features(self, mel: torch.Tensor) -> None:
        """Log-mel frames [n_mels, t] of the video's audio, floored as the whole clip's (Qwen3Thinker.audio_features
        of the clip), pushed in order."""
        av = self._need_av()
        if av.pcm.pcm:
            raise RuntimeError("push_av_audio_features() after push_av_audio() in one video")
        mel = mel.to(self.thinker.device)
        av.mel = mel if av.mel is None else torch.cat([av.mel, mel], dim=1)
        av.mel_frames += mel.shape[1]
        win = self.thinker.audio_tower.cfg.n_window_infer
        n = av.mel.shape[1] // win
        if n:
            full = av.mel[:, : n * win].unflatten(1, (n, win)).transpose(0, 1)
            av.mel = av.mel[:, n * win :]
            tokens = self.thinker.audio_tower.encode_windows(full).flatten(0, 1).to(self.thinker.lm.dtype)
            self._av_audio(av, 0, av.audio.shape[0], [tokens])

    @torch.inference_mode()
    def end_av(self) -> None:
        """The last patch (an odd last frame is repeated) and the last audio window, then the end tokens."""
        av = self._need_av()
        out = self.thinker.visual.flush(av.enc)
        if out is not None:
            av.patches.append(out)
        if not av.patches:
            raise VisionInputError("a video with no frames: push at least one frame before end_av()")
        if av.pcm.pcm:
            self._av_audio(av, *self._audio_windows(av.pcm, final=True))
        elif av.mel is not None and av.mel.shape[1]:
            tail = self.thinker.audio_tower.encode_last_window(av.mel, av.mel_frames).to(self.thinker.lm.dtype)
            self._av_audio(av, 0, av.audio.shape[0], [tail])
        av.video_done = av.audio_done = True
        self._pump_av(av)
        self._av = None
        self.cursor.next_id = av.run[1] + 1
        t = self.thinker.cfg.tokens
        self.feed_ids([t.audio_end, t.vision_end])

    def _need_av(self) -> _AVStream:
        if self._av is None:
            raise RuntimeError("video-with-audio input outside begin_av()/end_av()")
        return self._av

    def _av_audio(self, av: _AVStream, _k0: int, first: int, windows: list[torch.Tensor]) -> None:
        """Audio tokens from index `first` on are `windows` (new, or re-floored ones replacing what was there)."""
        if first < av.audio_fed:  # fed tokens change: back to the first stretch that held any of them
            i = next(i for i, m in enumerate(av.marks) if m.audio_end > first)
            m = av.marks[i]
            self._roll_back(m.cache_length, m.next_id)
            av.audio_fed, av.video.n_patches, av.run = m.audio_fed, m.patches_fed, m.run
            del av.marks[i:]
        av.audio = torch.cat([av.audio[:first], *windows])
        self._pump_av(av)

    def _pump_av(self, av: _AVStream) -> None:
        """Feed every patch and audio token whose place in the merged order is settled (module docstring)."""
        while True:
            k, a, n_audio = av.video.n_patches, av.audio_fed, av.audio.shape[0]
            t = int(self.cursor.cfg.time_offsets(k + 1, av.video.seconds_per_grid)[k])  # patch k's offset
            have = k < len(av.patches)
            if have and (t <= a or (av.audio_done and a == n_audio)):
                grid = (av.enc.layout.gh, av.enc.layout.gw)
                pos = av.video.next_patch(self.cursor, grid)
                out = av.patches[k]
                self._feed_encoded("video", out.tokens, pos, self._merged(grid), self._deepstack(out))
                self._extend_run(av, "video", pos)
                continue
            limit = n_audio if av.video_done and not have else min(n_audio, t)
            if limit <= a:
                return
            mark = _AVMark(a, limit, k, self.state.cache.length, self.cursor.next_id, av.run)
            av.marks.append(mark)
            pos = self.cursor.place(flat_positions(av.video.start + a, limit - a))
            self._feed_encoded("audio", av.audio[a:limit], pos)
            av.audio_fed = limit
            self._extend_run(av, "audio", pos)

    @staticmethod
    def _extend_run(av: _AVStream, kind: str, pos: torch.Tensor) -> None:
        top = int(pos.max())
        av.run = (kind, max(av.run[1], top)) if av.run[0] == kind else (kind, top)
