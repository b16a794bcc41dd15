"""Causal convolution stages of Code2Wav, each decoding a whole sequence or the next piece of a stream.

Every conv with memory keeps it in a `ConvState` owned by the session, found by the conv's `slot`:
* `CausalConv` (stride 1, left padding (k-1)*d): the state is its last (k-1)*d inputs, zeros before the
  first (exactly the zero padding of the whole-sequence decode), so a piece's outputs equal the whole
  decode's outputs at the same positions.
* `CausalTransposeConv` (kernel k, stride r, k in {r, 2r}; the reference trims k-r outputs at each end):
  with k = 2r, outputs [i*r, (i+1)*r) need inputs i and i+1, so a piece of n inputs finalises n*r outputs
  (n*r - r for the very first piece); the state is the last input's pending contribution.

Several streams in one call (`Code2Wav.step_rows`): the inputs are right-padded rows and a `Rows` says how many
columns of each are real. Being causal, a real column never reads a padding one, so only the states need care:
each conv keeps the tail of its row's real columns (not of the padding), and a transposed conv computes a row
whose stream starts now as if primed with its zero tail, then drops that row's first r outputs (what the very
first piece trims) and shifts it left, so every row stays left-aligned with `Rows.lengths` updated in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.token2wav.bigvgan import snake_beta


@dataclass
class ConvState:
    """Memory of one conv in one session, updated in place by each step."""

    tail: torch.Tensor  # conv: [B, C_in, (k-1)*d] its last inputs; transposed conv: [B, C_out, r] pending outputs
    primed: bool = False  # transposed convs: an input column has been seen


@dataclass
class Rows:
    """A right-padded batch of streams: row i's first lengths[i] columns are real (the count at the stage the
    input has reached: transposed convs update it), `fresh`: the rows whose stream starts with this call."""

    lengths: torch.Tensor  # [B] long
    fresh: torch.Tensor  # [B] bool

    def gather(self, x: torch.Tensor, start: torch.Tensor, width: int) -> torch.Tensor:
        """x [B, C, T] -> [B, C, width]: columns start[i] .. start[i] + width - 1 of each row (clamped to T)."""
        idx = (start[:, None] + torch.arange(width, device=x.device)[None]).clamp(max=x.shape[-1] - 1)
        return x.gather(-1, idx[:, None].expand(-1, x.shape[1], -1))


class CausalConv(nn.Module):
    """Conv1d, stride 1: output t reads inputs t - (k-1)*dilation .. t."""

    slot: int

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, groups=groups)
        self.context = (kernel - 1) * dilation

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> ConvState:
        return ConvState(torch.zeros(batch, self.conv.in_channels, self.context, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, states: list[ConvState], rows: Rows | None = None) -> torch.Tensor:
        """[B, C_in, T] -> [B, C_out, T]; `rows`: x is a right-padded batch (the tails kept are of real columns)."""
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        if self.context == 0:
            return self.conv(x)
        tail = states[self.slot].tail
        full = torch.cat([tail, x], dim=-1)
        out = self.conv(full)
        if rows is None:
            tail.copy_(full[..., full.shape[-1] - self.context :])
        else:  # row i's real inputs end at column context + lengths[i] of `full`
            tail.copy_(rows.gather(full, rows.lengths, self.context))
        return out


class CausalTransposeConv(nn.Module):
    """Transposed conv upsampling by `stride`; yields only outputs whose inputs have all arrived.

    Computed as one matmul (each input column's k outputs) and an overlap-add of the two halves when
    k = 2r: on short stream pieces torch's conv_transpose1d falls back to a slow path (measured 37 ms per
    call for the released 1536 -> 768 stage on one frame, against a few ms as a matmul). The state holds
    the second half of the last column's outputs, still waiting for the next column's first half.
    """

    slot: int

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        if kernel not in (stride, 2 * stride):
            raise ValueError(f"causal transposed conv needs kernel = stride or 2*stride, got {kernel}, {stride}")
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel, stride)  # the checkpoint's weight [C_in, C_out, k]
        self.stride = stride
        self.overlapping = kernel == 2 * stride

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> ConvState:
        r = self.stride if self.overlapping else 0
        return ConvState(torch.zeros(batch, self.conv.out_channels, r, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, states: list[ConvState], rows: Rows | None = None) -> torch.Tensor:
        """[B, C_in, T] -> [B, C_out, ~T*r]; `rows`: x is a right-padded batch (see the module docstring)."""
        B, _, T = x.shape
        C, r = self.conv.out_channels, self.stride
        bias = self.conv.bias[None, :, None] if self.conv.bias is not None else 0.0
        if T == 0:
            return x.new_zeros(B, C, 0)
        y = (x.transpose(1, 2) @ self.conv.weight.flatten(1)).view(B, T, C, -1)  # [B, T, C_out, k]
        if not self.overlapping:
            if rows is not None:
                rows.lengths = rows.lengths * r
            return y.permute(0, 2, 1, 3).reshape(B, C, T * r) + bias
        state = states[self.slot]
        first, second = y[..., :r], y[..., r:]
        if rows is not None:  # every row as primed (a fresh row's tail is still zero), fresh rows then trimmed
            out = first + torch.cat([state.tail[:, None], second[:, :-1]], dim=1)
            state.tail.copy_(second[torch.arange(B, device=x.device), rows.lengths - 1])
            state.primed = True
            flat = out.permute(0, 2, 1, 3).reshape(B, C, -1) + bias
            rows.lengths = rows.lengths * r - r * rows.fresh
            return rows.gather(flat, r * rows.fresh.long(), flat.shape[-1]) if bool(rows.fresh.any()) else flat
        if state.primed:  # output column i = first half of input i + second half of input i - 1
            out = first + torch.cat([state.tail[:, None], second[:, :-1]], dim=1)
        else:  # the very first column lacks its earlier input: the reference trims it
            out = first[:, 1:] + second[:, :-1]
        state.tail.copy_(second[:, -1])
        state.primed = True
        return out.permute(0, 2, 1, 3).reshape(B, C, -1) + bias


class SnakeBeta(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))  # log-frequency
        self.beta = nn.Parameter(torch.zeros(channels))  # log-magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake_beta(x, self.alpha, self.beta)


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LayerNorm(causal depthwise conv k7 (x))), MLP 4x wide with exact GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, states: list[ConvState], rows: Rows | None = None) -> torch.Tensor:  # [B, C, T]
        h = self.dwconv(x, states, rows).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(nn.Module):
    """x + conv_k1(snake(conv_k7_dilated(snake(x))))."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor, states: list[ConvState], rows: Rows | None = None) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x), states, rows)), states, rows)


class DecoderBlock(nn.Module):
    """SnakeBeta, transposed conv (kernel 2r, stride r) halving the channels, residual units (dilation 1, 3, 9)."""

    def __init__(self, c_in: int, c_out: int, rate: int) -> None:
        super().__init__()
        # `block.{0..4}`, as the checkpoint names them
        self.block = nn.ModuleList(
            [SnakeBeta(c_in), CausalTransposeConv(c_in, c_out, 2 * rate, rate)]
            + [ResidualUnit(c_out, d) for d in (1, 3, 9)]
        )

    def forward(self, x: torch.Tensor, states: list[ConvState], rows: Rows | None = None) -> torch.Tensor:
        act, up, *units = self.block
        x = up(act(x), states, rows)
        for unit in units:
            x = unit(x, states, rows)
        return x
