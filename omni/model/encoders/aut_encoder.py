"""Qwen3-Omni's AuT audio encoder: a Conv2d stem per 1-s chunk, then a transformer over 8-s windows.

Facts (shared/reference/qwen_omni.md section 2.2, transformers' Qwen3OmniMoeAudioEncoder):
* the log-mel clip [128, T] is cut into chunks of `2 * n_window` = 100 frames from its start. Each chunk on
  its own goes through three Conv2d(3x3, stride 2, padding 1) + GELU over (mel, time) -> [480, 16, 13], is
  flattened channel-major to 7680 per time step and projected to d_model by `conv_out` (no bias); a
  sinusoidal position table restarts at 0 in every chunk. A full chunk gives 13 tokens (80 ms each).
* the reference zero-pads a short last chunk to the longest chunk of the batch before the convs; for one
  clip that is 100 frames whenever the clip has a full chunk. The padding changes the convs' output at
  the chunk's last valid steps (the second conv reads one padded column), so we pad the same way.
* the 32 pre-LN layers attend bidirectionally inside windows of `n_window_infer` frames (800 = 8 chunks =
  104 tokens = 8 s), counted from the clip start; windows never see each other.
* head: ln_post -> proj1 -> GELU -> proj2 (to the Thinker's width).

Because windows are independent, a window's tokens are final once its 800th frame has arrived: the
streaming encoder (`step`) emits them then, and re-encodes the growing last window only when asked for
provisional tokens. The trade-off (8 s until tokens are final) is described in `AuTStreamOutput`. A
deployment that wants final tokens sooner can run with a smaller `n_window_infer` (any multiple of 100
frames; the AuT was reportedly trained with dynamic 1-8 s windows, section 2.2 [P]): tokens are then final
every window, at the price of no longer matching the released configuration's (and transformers') output.

Weights load from the checkpoint's `thinker.audio_tower.*` tensors (prefix removed) by `load_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.encoders.audio_encoder import AudioEncoderLayer, sinusoid_table
from omni.model.encoders.audio_frontend import AudioInputError, check_mel, fill_blocks, whole_blocks
from omni.model.encoders.config import AuTEncoderConfig, aut_token_count, aut_token_count_chunk
from omni.model.encoders.weights import load_encoder_state_dict


@dataclass
class AuTStreamState:
    """Per-session streaming state: the mel frames of the attention window being filled."""

    pending: torch.Tensor  # [n_mels, n_window_infer] preallocated; first n_pending columns valid
    n_pending: int = 0
    n_windows: int = 0  # completed windows since the last flush

    @property
    def n_frames(self) -> int:
        """Mel frames fed since the last flush."""
        return self.n_windows * self.pending.shape[1] + self.n_pending


@dataclass
class AuTStreamOutput:
    """What one `step` yields.

    `final`: tokens of the windows this step completed, in order; they never change and follow the
    tokens of earlier steps' `final`, so the Thinker can prefill them at once.

    `provisional`: with `step(..., provisional=True)`, the tokens of the still-growing last window as if
    the audio ended now (`flush` would return exactly these); `None` otherwise. Attention inside a window
    is bidirectional, so each new frame can change all of them: they replace the previous step's
    provisional tokens rather than extend them. A consumer that prefills them must roll its KV cache back
    to the last final token when the next step arrives. With the released 8-s windows, final tokens lag
    speech by up to 8 s; at the end of a turn at most one window (104 tokens) is left to encode and
    prefill, which is what bounds the reply latency.
    """

    final: torch.Tensor  # [n_final, output_dim]
    provisional: torch.Tensor | None = None  # [n_provisional, output_dim]


class AuTEncoder(nn.Module):
    """AuT audio encoder. Weights only; per-stream data lives in `AuTStreamState`."""

    positional_embedding: torch.Tensor  # [max_source_positions, D], computed (not in the checkpoint)

    def __init__(self, cfg: AuTEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, d = cfg.downsample_hidden_size, cfg.hidden_size
        self.conv2d1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2d2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.conv2d3 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.conv_out = nn.Linear(c * cfg.freq_after_stem, d, bias=False)
        self.register_buffer("positional_embedding", sinusoid_table(cfg.max_source_positions, d), persistent=False)
        self.layers = nn.ModuleList(AudioEncoderLayer(cfg, k_bias=True) for _ in range(cfg.num_layers))
        self.ln_post = nn.LayerNorm(d)
        self.proj1 = nn.Linear(d, d)
        self.proj2 = nn.Linear(d, cfg.output_dim)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load `thinker.audio_tower.*` tensors with the prefix removed; clear errors on missing/mis-shaped."""
        load_encoder_state_dict(self, state_dict, "AuT audio encoder")

    # ---- building blocks -------------------------------------------------------------------------------

    def _stem(self, chunks: torch.Tensor) -> torch.Tensor:
        """Conv stem of equal-length chunks [B, n_mels, L] -> [B, T, D] with per-chunk positions."""
        x = chunks.to(self.conv2d1.weight.dtype)[:, None]  # [B, 1, mel, L]
        for conv in (self.conv2d1, self.conv2d2, self.conv2d3):
            x = F.gelu(conv(x))
        b, c, f, t = x.shape
        x = self.conv_out(x.permute(0, 3, 1, 2).reshape(b, t, c * f))  # channel-major flatten per time step
        return x + self.positional_embedding[:t].to(x.dtype)

    def _window_inputs(self, mel: torch.Tensor, pad_tail: bool) -> torch.Tensor:
        """Stem outputs of one window's frames [n_mels, L <= n_window_infer] -> [tokens, D]."""
        chunk = self.cfg.chunk_frames
        n_full, tail = divmod(mel.shape[1], chunk)
        parts = []
        if n_full:
            chunks = mel[:, : n_full * chunk].unflatten(1, (n_full, chunk)).transpose(0, 1)  # [C, mel, 100]
            parts.append(self._stem(chunks).flatten(0, 1))
        if tail:
            last = mel[:, n_full * chunk :]
            if pad_tail:  # the reference pads a short chunk to the batch's longest (a full chunk)
                last = F.pad(last, (0, chunk - tail))
            parts.append(self._stem(last[None])[0, : aut_token_count_chunk(tail)])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """Layers with full attention inside each window, then the head: [W, T, D] -> [W, T, out]."""
        for layer in self.layers:
            x = layer(x)
        return self.proj2(F.gelu(self.proj1(self.ln_post(x))))

    def encode_windows(self, mel: torch.Tensor) -> torch.Tensor:
        """Full windows [W, n_mels, n_window_infer] -> [W, window_tokens, out] (batched)."""
        x = torch.stack([self._window_inputs(w, pad_tail=False) for w in mel])
        return self._transform(x)

    def encode_last_window(self, mel: torch.Tensor, clip_frames: int) -> torch.Tensor:
        """The clip's last, possibly partial window [n_mels, L] -> [aut_token_count(L), out]. `clip_frames`
        is the whole clip's length: its tail chunk is zero-padded to a full chunk when the clip has one."""
        pad = clip_frames >= self.cfg.chunk_frames
        return self._transform(self._window_inputs(mel, pad_tail=pad)[None])[0]

    # ---- offline --------------------------------------------------------------------------------------

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline encoding of one clip: [n_mels, T] -> [aut_token_count(T), output_dim]."""
        check_mel(mel, self.cfg.num_mel_bins)
        windows, rest = whole_blocks(mel, self.cfg.n_window_infer)  # [W, mel, 800], [mel, < 800]
        out = [] if windows is None else [self.encode_windows(windows).flatten(0, 1)]
        if rest is not None:
            out.append(self.encode_last_window(rest, mel.shape[1]))
        return torch.cat(out) if len(out) > 1 else out[0]

    def token_count(self, n_mel_frames: int) -> int:
        """Tokens for `n_mel_frames` frames, offline or streamed (3 s = 300 frames -> 39)."""
        return aut_token_count(n_mel_frames, self.cfg.n_window)

    def final_token_count(self, n_mel_frames: int) -> int:
        """Tokens that are final after `n_mel_frames` frames of a still-open stream (whole windows only)."""
        return (n_mel_frames // self.cfg.n_window_infer) * self.cfg.window_tokens

    # ---- streaming ------------------------------------------------------------------------------------

    def init_state(self, device: torch.device | str | None = None) -> AuTStreamState:
        dtype = self.conv2d1.weight.dtype
        pending = torch.zeros(self.cfg.num_mel_bins, self.cfg.n_window_infer, device=device, dtype=dtype)
        return AuTStreamState(pending=pending)

    def step(self, state: AuTStreamState, mel: torch.Tensor, provisional: bool = False) -> AuTStreamOutput:
        """Feed mel frames [n_mels, t] (any t >= 0). Returns the final tokens of every window they complete
        and, with `provisional=True`, the current encoding of the partial window (see `AuTStreamOutput`)."""
        out = [self._empty(state)]
        for window in fill_blocks(state, mel):
            out.append(self.encode_windows(window[None])[0])
            state.n_windows += 1
        final = torch.cat(out)
        if not provisional:
            return AuTStreamOutput(final)
        if state.n_pending == 0:
            return AuTStreamOutput(final, self._empty(state))
        return AuTStreamOutput(final, self.encode_last_window(state.pending[:, : state.n_pending], state.n_frames))

    def flush(self, state: AuTStreamState) -> torch.Tensor:
        """End of turn: the tokens of the partial last window (if any); resets the state for the next turn."""
        if state.n_frames == 0:
            raise AudioInputError("zero-length audio: flush() before any mel frame was fed")
        out = self._empty(state)
        if state.n_pending:
            out = self.encode_last_window(state.pending[:, : state.n_pending], state.n_frames)
        state.n_pending = 0
        state.n_windows = 0
        return out

    def _empty(self, state: AuTStreamState) -> torch.Tensor:
        return state.pending.new_zeros(0, self.cfg.output_dim)
