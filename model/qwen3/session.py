"""One conversation with the Qwen3-Omni Thinker, prefilled piece by piece.

Mirrors `ThinkerSession` (model/thinker_session.py) where Qwen3-Omni differs in what a piece is:
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
temporal patch of 2 frames is encoded and prefilled as it completes). Video-with-audio streams
(use_audio_in_video) are not here yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import torch

from model.encoders.audio_frontend import HOP_LENGTH, AudioInputError
from model.encoders.qwen3_vision import Qwen3VisionOutput, Qwen3VisionState
from model.encoders.vision_preprocess import VisionInputError
from model.lm.decoder import DecoderState, LayerAdds
from model.lm.detokenizer import IncrementalDetokenizer
from model.lm.kv_cache import CacheConfig
from model.lm.sampling import SamplerState, SamplingConfig, sample
from model.lm.tokenizer import TextTokenizer
from model.prompt import PromptBuilder
from model.qwen3.thinker import Qwen3Thinker
from model.thinker_session import ReplyRecord, ThinkerMark, TokenText
from model.tmrope import PositionCursor, StreamingVideoPositions

_STFT_HALF = 200  # samples each side of a mel frame's centre (n_fft / 2)
_FLOOR = 8.0  # the 80 dB floor in log10 units


@dataclass
class _AudioTurn:
    """The open audio segment: its samples so far and, per prefilled window, where it starts in the cache and
    the cursor, and its (quietest log10 value, the peak it was floored at)."""

    pcm: list[torch.Tensor] = field(default_factory=list)
    marks: list[tuple[int, int]] = field(default_factory=list)
    floors: list[tuple[float, float]] = field(default_factory=list)


class Qwen3ThinkerSession:
    """One conversation: bounded KV cache, TM-RoPE cursor (Qwen3 rules), open audio segment.

    Turn: `start_user_turn()`, any of `add_text`, `begin_audio`/`push_audio`/`end_audio`, `add_image`,
    `add_video`, `begin_video`/`push_video_frame`/`end_video`; then `end_user_turn()` and `generate(...)` or
    `respond(...)`. Not thread-safe."""

    def __init__(
        self,
        thinker: Qwen3Thinker,
        prompt: PromptBuilder,
        system_prompt: str | None = None,
        cache: CacheConfig | None = None,
        tokenizer: TextTokenizer | None = None,
        tap_layer: int | None = None,
    ) -> None:
        """`tap_layer` k (the Talker's accept_hidden_layer): every fed piece's input embeddings and the hidden
        states entering layer k are kept for `take_taps` (decode steps then run the per-layer path)."""
        self.thinker = thinker
        self.tap_layer = tap_layer
        self._taps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.state: DecoderState = thinker.lm.init_state(cache)
        self.cursor = PositionCursor(thinker.cfg.rope)
        self.logits: torch.Tensor | None = None
        self.prefilled_tokens = 0
        self._audio: _AudioTurn | None = None
        self._video: tuple[Qwen3VisionState, StreamingVideoPositions] | None = None
        if system_prompt is not None:
            self.feed_ids(prompt.system_turn(system_prompt))

    # ---- prefill primitives ------------------------------------------------------------------------------

    @torch.inference_mode()
    def feed_ids(self, ids: Sequence[int]) -> None:
        """Text or special tokens at the next text positions."""
        if ids:
            x = self.thinker.lm.embed_tokens(torch.tensor(list(ids), device=self.thinker.device))
            self._feed(x, self.cursor.text(len(ids)))

    def _feed(self, x: torch.Tensor, positions: torch.Tensor, adds: LayerAdds | None = None) -> None:
        if x.shape[0] == 0:
            return
        x = x.to(self.thinker.lm.dtype)
        out = self.thinker.lm(self.state, inputs_embeds=x[None], positions=positions[:, None].to(x.device),
                              layer_adds=adds, hidden_layer=self.tap_layer)
        assert out.logits is not None
        self.logits = out.logits[0]
        self.prefilled_tokens += x.shape[0]
        if out.layer_hidden is not None:
            self._taps.append((x, out.layer_hidden[0]))

    def take_taps(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input embeddings [n, C], hidden states entering `tap_layer` [n, C]) of each piece fed since the last
        call, in order (a rolled-back audio window's pieces included: the caller drops what `rollback` drops)."""
        taps, self._taps = self._taps, []
        return taps

    # ---- turns -------------------------------------------------------------------------------------------

    def start_user_turn(self) -> None:
        self.feed_ids(self.prompt.turn_start("user"))

    def add_text(self, text: str) -> None:
        self.feed_ids(self.prompt.text(text))

    def end_user_turn(self) -> torch.Tensor:
        """Close the user turn, open the assistant's; returns the logits [V] of the first reply token."""
        self._check_idle()
        self.feed_ids(self.prompt.generation_prompt())
        assert self.logits is not None
        return self.logits

    def generate(self, sampling: SamplingConfig, stop_ids: frozenset[int]) -> Generator[int, None, None]:
        """Yield reply token ids, each prefilled at the next text position; afterwards (stop token,
        max_new_tokens or the caller closing the iterator) <|im_end|>\\n is fed."""
        if self.logits is None:
            raise RuntimeError("nothing prefilled: call end_user_turn() first")
        dev = self.thinker.device
        sampler = SamplerState.create(self.thinker.lm.cfg.vocab_size, seed=sampling.seed, device=dev)
        try:
            for _ in range(sampling.max_new_tokens):
                token = int(sample(self.logits[None], sampling, sampler)[0])
                if token in stop_ids:
                    break
                sampler.observe(torch.tensor([[token]], device=dev))
                yield token
                self.feed_ids([token])
        finally:
            self.feed_ids(self.prompt.turn_end())

    def respond(
        self, sampling: SamplingConfig, stop_ids: frozenset[int] | None = None
    ) -> Generator[TokenText | ReplyRecord, None, None]:
        """The reply as text: TokenText events as tokens complete text, then a ReplyRecord."""
        if self.tokenizer is None:
            raise RuntimeError("respond() needs the session's tokenizer")
        stops = stop_ids if stop_ids is not None else frozenset(
            sampling.stop_token_ids or self.tokenizer.stop_token_ids)
        detok = IncrementalDetokenizer(self.tokenizer)
        tokens: list[int] = []
        gen = self.generate(sampling, stops)
        try:
            for token in gen:
                tokens.append(token)
                delta = detok.push(token)
                if delta:
                    yield TokenText(delta, token, time.monotonic())
        finally:
            gen.close()
        yield ReplyRecord(detok.text(), tokens, [], 0, time.monotonic())

    # ---- undo --------------------------------------------------------------------------------------------

    def mark(self) -> ThinkerMark:
        return ThinkerMark(self.state.cache.length, self.state.next_position, self.cursor.next_id,
                           self.prefilled_tokens, self.logits)

    def rollback(self, mark: ThinkerMark) -> None:
        """Forget every position prefilled since `mark` (exact while at most the cache's `chunk` is dropped)."""
        if mark.thinker_tokens > self.state.cache.length:
            raise ValueError("rollback() to a mark ahead of the session (a mark of another session?)")
        self.state.cache.truncate(mark.thinker_tokens)
        self.state.next_position = mark.thinker_position
        self.cursor.next_id = mark.next_id
        self.prefilled_tokens = mark.prefilled_tokens
        self.logits = mark.logits

    # ---- audio -------------------------------------------------------------------------------------------

    def begin_audio(self) -> None:
        self._check_idle()
        self.feed_ids([self.thinker.cfg.tokens.audio_start])
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

    @torch.inference_mode()
    def _prefill_audio(self, seg: _AudioTurn, final: bool) -> int:
        before = self.state.cache.length
        pcm = torch.cat(seg.pcm) if seg.pcm else torch.zeros(0, device=self.thinker.device)
        if final and pcm.numel() <= _STFT_HALF:
            raise AudioInputError(f"audio of {pcm.numel()} samples is too short (needs > {_STFT_HALF}, 12.5 ms)")
        if pcm.numel() <= _STFT_HALF:
            return 0
        log10 = self.thinker.mel.unpadded_log10(pcm)  # [n_mels, n // 160]
        # frames whose STFT window lies inside the samples so far keep their values when more audio arrives
        stable = log10.shape[1] if final else max(0, (pcm.numel() - _STFT_HALF) // HOP_LENGTH + 1)
        stable = min(stable, log10.shape[1])
        if stable == 0:
            return 0
        peak = float(log10[:, :stable].max())
        changed = [k for k, (low, used) in enumerate(seg.floors) if used < peak and low < peak - _FLOOR]
        if changed:
            cache_len, next_id = seg.marks[changed[0]]
            self.prefilled_tokens -= self.state.cache.length - cache_len
            self.state.cache.truncate(cache_len)
            self.cursor.next_id = next_id
            del seg.marks[changed[0] :], seg.floors[changed[0] :]
        tower = self.thinker.audio_tower
        win = tower.cfg.n_window_infer
        n_frames = log10.shape[1]
        n_windows = -(-n_frames // win) if final else stable // win
        for k in range(len(seg.marks), n_windows):
            frames = log10[:, k * win : min((k + 1) * win, n_frames)]
            seg.marks.append((self.state.cache.length, self.cursor.next_id))
            seg.floors.append((float(frames.min()), peak))
            mel = self.thinker.mel.finish(frames, peak)
            if frames.shape[1] == win:
                tokens = tower.encode_windows(mel[None])[0]
            else:
                tokens = tower.encode_last_window(mel, n_frames)
            self._feed(tokens.to(self.thinker.lm.dtype), self.cursor.audio(tokens.shape[0]))
        return self.state.cache.length - before

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
        self.feed_ids([self.thinker.cfg.tokens.vision_start])
        enc = self.thinker.visual.init_state(height, width, self.thinker.device)
        self._video = (enc, StreamingVideoPositions(self.cursor.next_id, seconds_per_grid))

    @torch.inference_mode()
    def push_video_frame(self, frame: torch.Tensor) -> int:
        """One normalised frame [3, H, W]; every second frame completes a temporal patch, prefilled at once with
        its DeepStack residuals. Returns the tokens prefilled."""
        if self._video is None:
            raise RuntimeError("push_video_frame() outside begin_video()/end_video()")
        enc, _ = self._video
        return self._feed_patch(self.thinker.visual.step(enc, frame.to(self.thinker.device)))

    @torch.inference_mode()
    def end_video(self) -> None:
        """An odd last frame fills its temporal patch (as the processor pads); then <|vision_end|>."""
        if self._video is None:
            raise RuntimeError("end_video() without begin_video()")
        enc, pos = self._video
        self._feed_patch(self.thinker.visual.flush(enc))
        if pos.n_patches == 0:
            raise VisionInputError("a video with no frames: push at least one frame before end_video()")
        self._video = None
        self.feed_ids([self.thinker.cfg.tokens.vision_end])

    def _feed_patch(self, out: Qwen3VisionOutput | None) -> int:
        if out is None:
            return 0
        assert self._video is not None
        enc, pos = self._video
        positions = pos.next_patch(self.cursor, (enc.layout.gh, enc.layout.gw))
        n = out.tokens.shape[0]
        self._feed(out.tokens, positions, LayerAdds(torch.ones(n, dtype=torch.bool, device=self.thinker.device),
                                                    [d.to(self.thinker.lm.dtype) for d in out.deepstack]))
        return n

    def _add_vision(
        self, out: Qwen3VisionOutput, place: Callable[[Sequence[int]], torch.Tensor], grid: Sequence[int]
    ) -> None:
        t = self.thinker.cfg.tokens
        self.feed_ids([t.vision_start])
        positions = place(grid)
        n = out.tokens.shape[0]
        adds = LayerAdds(torch.ones(n, dtype=torch.bool, device=self.thinker.device), out.deepstack)
        self._feed(out.tokens, positions, adds)
        self.feed_ids([t.vision_end])

    def _check_idle(self) -> None:
        if self._audio is not None or self._video is not None:
            raise RuntimeError("an audio or video segment is still open")
