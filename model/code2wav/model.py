"""Qwen3-Omni Code2Wav: codec frames [B, 16, T] (12.5 Hz) -> 24 kHz waveform, causal from the first frame.

Per frame: the 16 codes' embeddings (one table, codebook q offset by q * codebook_size) are averaged; an
8-layer sliding-window transformer; two x2 stages (transposed conv, ConvNeXt) -> 4 vectors per frame;
a k7 conv to decoder_dim; four decoder blocks upsampling 8, 5, 4, 3 while halving the channels; SnakeBeta,
a k7 conv to one channel and a clamp to [-1, 1]: 1920 samples (80 ms) per frame.

Everything is causal, so `step` on the next frames of a `Code2WavState` returns exactly the samples the
whole-sequence decode has at those positions: n frames give n * 1920 - 555 samples (the decoder blocks'
transposed convs hold back their last outputs until the next frame), each later frame 1920 more.
`forward` is one step on a fresh state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from model.code2wav.config import Code2WavConfig
from model.code2wav.convs import (
    CausalConv,
    CausalTransposeConv,
    ConvNeXtBlock,
    ConvState,
    DecoderBlock,
    SnakeBeta,
)
from model.code2wav.transformer import AttentionState, PreTransformer


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

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Whole-sequence decode: waveform [B, T * 1920 - 555] of codes [B, Q, T]."""
        return self.step(self.init_state(codes.shape[0]), codes)
