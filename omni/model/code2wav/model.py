"""Qwen3-Omni Code2Wav: codec frames [B, 16, T] (12.5 Hz) -> 24 kHz waveform, causal from the first frame.

Per frame: the 16 codes' embeddings (one table, codebook q offset by q * codebook_size) are averaged; an
8-layer sliding-window transformer; two x2 stages (transposed conv, ConvNeXt) -> 4 vectors per frame;
a k7 conv to decoder_dim; four decoder blocks upsampling 8, 5, 4, 3 while halving the channels; SnakeBeta,
a k7 conv to one channel and a clamp to [-1, 1]: 1920 samples (80 ms) per frame.

Everything is causal, so `step` on the next frames of a `Code2WavState` returns exactly the samples the
whole-sequence decode has at those positions: n frames give n * 1920 - 555 samples (the decoder blocks'
transposed convs hold back their last outputs until the next frame), each later frame 1920 more.
`forward` is one step on a fresh state.

`step_rows` steps several streams (sessions) at once: their frames right-padded to the longest into one batch, the
states stacked, each row masked and its state kept to its own real frames (transformer.py `forward_rows`, convs.py
`Rows`), so each stream gets what `step` gives it alone, to float rounding; one stream is `step` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from omni.model.code2wav.config import Code2WavConfig
from omni.model.code2wav.convs import (
    CausalConv,
    CausalTransposeConv,
    ConvNeXtBlock,
    ConvState,
    DecoderBlock,
    Rows,
    SnakeBeta,
)
from omni.model.code2wav.transformer import AttentionState, PreTransformer
from omni.model.lm.batch import pad_rows


@dataclass
class Code2WavState:
    """Everything one stream (a spoken reply) remembers between steps; made by `Code2Wav.init_state`."""

    attention: AttentionState
    convs: list[ConvState]  # indexed by each conv's `slot`
    frames: int = 0
    samples: int = 0  # samples returned so far


class Code2Wav(nn.Module):
    """Weights only (shared by sessions); per-stream data lives in Code2WavState."""

    code_offset: torch.Tensor

    def __init__(self, cfg: Code2WavConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, Q, K = cfg.hidden_size, cfg.num_quantizers, cfg.codebook_size
        self.pre_transformer = PreTransformer(cfg)
        self.code_embedding = nn.Embedding(Q * K, C)
        self.register_buffer("code_offset", torch.arange(Q)[None, :, None] * K, persistent=False)
        # Module names and nesting are the checkpoint's: upsample.{i}.{0,1}, decoder.{0..6}.
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransposeConv(C, C, f, f), ConvNeXtBlock(C)]) for f in cfg.upsampling_ratios
        )
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.decoder = nn.ModuleList(
            [CausalConv(C, dims[0], 7)]
            + [DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(cfg.upsample_rates)]
            + [SnakeBeta(dims[-1]), CausalConv(dims[-1], 1, 7)]
        )
        self._convs: list[CausalConv | CausalTransposeConv] = [
            m for m in self.modules() if isinstance(m, (CausalConv, CausalTransposeConv))
        ]
        for slot, conv in enumerate(self._convs):
            conv.slot = slot

    @property
    def dtype(self) -> torch.dtype:
        return self.code_embedding.weight.dtype

    def init_state(self, batch: int = 1) -> Code2WavState:
        device, dtype = self.code_embedding.weight.device, self.dtype
        return Code2WavState(
            self.pre_transformer.init_state(batch, device, dtype),
            [conv.init_state(batch, device, dtype) for conv in self._convs],
        )

    def check_codes(self, codes: torch.Tensor, batch: int | None = None) -> None:
        Q, K = self.cfg.num_quantizers, self.cfg.codebook_size
        if codes.dim() != 3 or codes.shape[1] != Q:
            raise ValueError(f"codes must be [batch, {Q} codebooks, frames], got shape {tuple(codes.shape)}")
        if batch is not None and codes.shape[0] != batch:
            raise ValueError(f"codes have batch {codes.shape[0]}, the stream was made for {batch}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must lie in [0, {K}), got [{int(codes.min())}, {int(codes.max())}]")

    @torch.no_grad()
    def step(self, state: Code2WavState, codes: torch.Tensor) -> torch.Tensor:
        """Waveform [B, S] that the next frames `codes` [B, Q, n] make final (S = 1920 n, less 555 at first)."""
        self.check_codes(codes, state.attention.k.shape[1])
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 0, dtype=self.dtype, device=codes.device)
        x = self.code_embedding(codes + self.code_offset).mean(1)  # [B, n, C]
        x = self.pre_transformer(x, state.attention).transpose(1, 2)  # [B, C, n]
        for stage in cast(list[nn.ModuleList], self.upsample):
            x = stage[1](stage[0](x, state.convs), state.convs)  # transposed conv, ConvNeXt
        for block in self.decoder:
            x = block(x, state.convs) if not isinstance(block, SnakeBeta) else block(x)
        state.frames += codes.shape[-1]
        state.samples += x.shape[-1]
        return x[:, 0].clamp(-1.0, 1.0)

    @torch.no_grad()
    def step_rows(self, states: Sequence[Code2WavState], codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`step` of several streams in one batched call: states of batch 1 (distinct streams), codes [1, Q, n_i]
        with n_i >= 1 each (lengths may differ); returns each stream's waveform [S_i], as `step` gives it alone
        (to float rounding). One stream runs `step` itself."""
        if len(states) != len(codes) or not states:
            raise ValueError(f"need one codes tensor per state, got {len(states)} states and {len(codes)} codes")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("one step per stream at a time: a stream's next frames need its previous state")
        for s, c in zip(states, codes, strict=True):
            self.check_codes(c, s.attention.k.shape[1])
            if c.shape[0] != 1 or c.shape[-1] == 0:
                raise ValueError(f"batched rows take codes [1, Q, n >= 1] each, got shape {tuple(c.shape)}")
        if len(states) == 1:
            return [self.step(states[0], codes[0])[0]]
        padded, lengths = pad_rows(codes, dim=-1)
        dev = padded.device
        rows = Rows(torch.tensor(lengths, device=dev), torch.tensor([s.frames == 0 for s in states], device=dev))
        att = [s.attention for s in states]
        k, v = torch.cat([a.k for a in att], dim=1), torch.cat([a.v for a in att], dim=1)
        convs = [ConvState(torch.cat([s.convs[j].tail for s in states])) for j in range(len(self._convs))]
        x = self.code_embedding(padded + self.code_offset).mean(1)  # [B, N, C]
        counters = torch.tensor([[a.cached, a.position] for a in att], device=dev)
        x = self.pre_transformer.forward_rows(x, k, v, counters[:, 0], counters[:, 1], rows.lengths).transpose(1, 2)
        for stage in cast(list[nn.ModuleList], self.upsample):
            x = stage[1](stage[0](x, convs, rows), convs, rows)
        for block in self.decoder:
            x = block(x, convs, rows) if not isinstance(block, SnakeBeta) else block(x)
        wav = x[:, 0].clamp(-1.0, 1.0)
        out = []
        window = self.cfg.sliding_window - 1
        for i, (s, n, m) in enumerate(zip(states, lengths, rows.lengths.tolist(), strict=True)):
            s.attention.k.copy_(k[:, i : i + 1])
            s.attention.v.copy_(v[:, i : i + 1])
            s.attention.cached = min(s.attention.cached + n, window)
            s.attention.position += n
            for mine, batched in zip(s.convs, convs, strict=True):
                mine.tail.copy_(batched.tail[i : i + 1])
                mine.primed = mine.primed or batched.primed  # transposed convs (see convs.py)
            s.frames += n
            s.samples += m
            out.append(wav[i, :m])
        return out

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Whole-sequence decode: waveform [B, T * 1920 - 555] of codes [B, Q, T]."""
        return self.step(self.init_state(codes.shape[0]), codes)
