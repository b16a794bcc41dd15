"""The Thinker's audio encoder: Whisper-style transformer over independent 2-second blocks.

A block is 200 mel frames (2 s). Each block on its own: conv1 (k3) + GELU, conv2 (k3, stride 2) + GELU
-> 100 frames, plus a sinusoidal position embedding that restarts at 0 in every block; the transformer
layers attend only within the block (block-diagonal attention); then pairs of frames are averaged
(stride-2 pool) -> 50 tokens, LayerNorm and a projection to the Thinker's width. So a full block gives
50 tokens (25 Hz, 40 ms per token), and because blocks never see each other a block can be encoded the
moment its 200th frame arrives: streaming output equals the offline encoding of the whole clip.

The reference pools pairs over the whole clip, not per block; with 100 frames per full block (even) the
pairs never straddle a block, so per-block pooling is the same computation.

Weights load from the checkpoint's `thinker.audio_tower.*` tensors (prefix removed) by `load_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.encoders.audio_frontend import AudioInputError, check_mel, fill_blocks, whole_blocks
from omni.model.encoders.config import AudioEncoderConfig, AuTEncoderConfig, audio_token_count
from omni.model.encoders.weights import load_encoder_state_dict


def sinusoid_table(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's position table [length, channels]: sin of all timescales, then cos of all timescales."""
    step = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-step * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class AudioAttention(nn.Module):
    """Bidirectional multi-head self-attention inside each block. k_proj has no bias in Whisper / Qwen2.5-Omni
    (`k_bias=False`) and one in Qwen3-Omni's AuT."""

    def __init__(self, cfg: AudioEncoderConfig | AuTEncoderConfig, k_bias: bool = False) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=k_bias)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B blocks, T, D] -> [B, T, D]
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, hd]; scale hd**-0.5
        return self.out_proj(o.transpose(1, 2).reshape(b, t, d))


class AudioEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: attention then GELU MLP, each with a residual."""

    def __init__(self, cfg: AudioEncoderConfig | AuTEncoderConfig, k_bias: bool = False) -> None:
        super().__init__()
        self.self_attn = AudioAttention(cfg, k_bias)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


@dataclass
class AudioEncoderState:
    """Per-session streaming state: the mel frames of the block being filled."""

    pending: torch.Tensor  # [n_mels, block_frames] preallocated; first n_pending columns valid
    n_pending: int = 0
    n_blocks: int = 0  # blocks encoded since the last flush (full blocks plus a flushed partial one)


class AudioEncoder(nn.Module):
    """Block-wise audio encoder. Weights only; per-stream data lives in `AudioEncoderState`."""

    positional_embedding: torch.Tensor  # [max_source_positions, D], not in the checkpoint (computed)

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoid_table(cfg.max_source_positions, d), persistent=False)
        # In the checkpoint but never read by the forward pass (the Thinker uses text-vocab bos/eos tokens).
        self.audio_bos_eos_token = nn.Embedding(2, cfg.output_dim)
        self.layers = nn.ModuleList(AudioEncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Linear(d, cfg.output_dim)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load `thinker.audio_tower.*` tensors with the prefix removed; clear errors on missing/mis-shaped."""
        load_encoder_state_dict(self, state_dict, "audio encoder", optional=("audio_bos_eos_token.weight",))

    def encode_blocks(self, mel: torch.Tensor) -> torch.Tensor:
        """Encode independent blocks of equal length: [B, n_mels, L <= 200] -> [B, audio_token_count(L), out]."""
        if mel.shape[-1] > self.cfg.block_frames:
            raise AudioInputError(f"a block has at most {self.cfg.block_frames} mel frames, got {mel.shape[-1]}")
        dtype = self.conv1.weight.dtype
        x = F.gelu(self.conv1(mel.to(dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T, D], T = (L - 1) // 2 + 1
        x = x + self.positional_embedding[: x.shape[1]].to(dtype)  # restarts at 0 in every block
        for layer in self.layers:
            x = layer(x)
        n_pairs = x.shape[1] // 2  # an odd last frame of a short final block has no partner: dropped
        x = x[:, : 2 * n_pairs].unflatten(1, (n_pairs, 2)).mean(dim=2)
        return self.proj(self.ln_post(x))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline encoding of one clip: [n_mels, T] -> [audio_token_count(T), output_dim]."""
        check_mel(mel, self.cfg.num_mel_bins)
        full, rest = whole_blocks(mel, self.cfg.block_frames)
        out = [] if full is None else [self.encode_blocks(full).flatten(0, 1)]
        if rest is not None:
            out.append(self.encode_blocks(rest[None])[0])
        return torch.cat(out) if len(out) > 1 else out[0]

    # ---- streaming ---------------------------------------------------------------------------------------

    def init_state(self, device: torch.device | str | None = None) -> AudioEncoderState:
        dtype = self.conv1.weight.dtype
        pending = torch.zeros(self.cfg.num_mel_bins, self.cfg.block_frames, device=device, dtype=dtype)
        return AudioEncoderState(pending=pending)

    def step(self, state: AudioEncoderState, mel: torch.Tensor) -> torch.Tensor:
        """Feed mel frames [n_mels, t] (any t >= 0); returns the tokens of every block they complete
        [50 * completed_blocks, output_dim] (possibly zero rows)."""
        out = [self._empty(state)]
        for block in fill_blocks(state, mel):
            out.append(self.encode_blocks(block[None])[0])
            state.n_blocks += 1
        return torch.cat(out)

    def flush(self, state: AudioEncoderState) -> torch.Tensor:
        """End of turn: encode the partial last block (if any) and reset the state for the next turn."""
        out = self._empty(state)
        if state.n_pending:
            out = self.encode_blocks(state.pending[None, :, : state.n_pending])[0]
        elif state.n_blocks == 0:
            raise AudioInputError("zero-length audio: flush() before any mel frame was fed")
        state.n_pending = 0
        state.n_blocks = 0
        return out

    def _empty(self, state: AudioEncoderState) -> torch.Tensor:
        return state.pending.new_zeros(0, self.cfg.output_dim)

    @staticmethod
    def token_count(n_mel_frames: int) -> int:
        """Tokens produced for `n_mel_frames` frames, offline or streamed (3 s = 300 frames -> 75)."""
        return audio_token_count(n_mel_frames)
