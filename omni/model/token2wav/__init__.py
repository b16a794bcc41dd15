"""token2wav: codec codes (50 Hz) -> DiT flow matching -> log-mel (100 Hz) -> BigVGAN -> 24 kHz PCM.

`Token2Wav` holds the weights (shared by sessions). Offline decoding (`mel`, `waveform`) reproduces the
reference's one-shot path given the same initial noise; `streaming.py` has the chunked schedule. The
reference runs this part in float32 (its mel floor at -115 dB and the ODE do not survive bf16), so the
loader keeps it float32 whatever dtype the language models use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from omni.model.token2wav.bigvgan import BigVGAN, BigVGANConfig
from omni.model.token2wav.dit import DiT, DiTConfig
from omni.model.token2wav.solver import SolverConfig, guided, solve

SAMPLE_RATE = 24000

__all__ = ["SAMPLE_RATE", "BigVGANConfig", "DiTConfig", "SolverConfig", "Token2Wav", "Token2WavConfig"]


@dataclass
class Token2WavConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    bigvgan: BigVGANConfig = field(default_factory=BigVGANConfig)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> Token2WavConfig:
        """Read `token2wav_config` (or a whole Qwen2.5-Omni config.json holding it)."""
        cfg = cfg.get("token2wav_config", cfg)
        return cls(
            dit=DiTConfig.from_hf_config(cfg.get("dit_config", {})),
            bigvgan=BigVGANConfig.from_hf_config(cfg.get("bigvgan_config", {})),
        )

    def to_hf_config(self) -> dict[str, Any]:
        return {"dit_config": self.dit.to_hf_config(), "bigvgan_config": self.bigvgan.to_hf_config()}

    @property
    def samples_per_code(self) -> int:
        """480 = 2 mel frames x 240 samples = 20 ms at 24 kHz."""
        return self.dit.repeats * self.bigvgan.hop


class Token2Wav(nn.Module):
    def __init__(self, cfg: Token2WavConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dit = DiT(cfg.dit)
        self.bigvgan = BigVGAN(cfg.bigvgan)

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.proj_out.weight.dtype

    def check_codes(self, codes: torch.Tensor) -> None:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.dit.num_embeds):
            raise ValueError(
                f"codec codes must be in [0, {self.cfg.dit.num_embeds}); got range "
                f"[{int(codes.min())}, {int(codes.max())}] (strip the talker's special tokens first)"
            )

    @torch.inference_mode()
    def sample_mel(
        self,
        codes: torch.Tensor,  # [1, N]
        cond: torch.Tensor,  # [1, enc_emb_dim] speaker vector of the voice
        ref_mel: torch.Tensor,  # [1, T_ref, mel_dim] reference mel of the voice
        noise: torch.Tensor,  # [1, N * repeats, mel_dim] initial state x_0
        solver: SolverConfig | None = None,
    ) -> torch.Tensor:
        """Mel [1, N * repeats, mel_dim] by solving the flow ODE over the whole sequence at once."""
        solver = solver or SolverConfig()
        self.check_codes(codes)
        T = codes.shape[1] * self.cfg.dit.repeats
        if noise.shape[1] != T:
            raise ValueError(
                f"noise covers {noise.shape[1]} mel frames, expected {T} (= codes x {self.cfg.dit.repeats})"
            )
        dtype = self.dtype
        conditioning = self.dit.condition(codes, self.dit.speaker_rows(cond.to(dtype), ref_mel.to(dtype)))

        return self.solve(conditioning, noise.to(dtype), solver)

    def solve(
        self,
        conditioning: torch.Tensor,
        noise: torch.Tensor,
        solver: SolverConfig,
        lengths: Sequence[int] | None = None,
        dit: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The guided flow ODE from noise [B, T, mel] given `DiT.condition` rows [2B, T, *] (the B conditional
        rows, then the B unconditional ones). `lengths`: real frames of each of the B rows when they differ
        (right-padded; each row then solves as it would alone, `DiT.plan`). `dit`: what evaluates the velocity
        (default `self.dit`; a compiled one, omni/model/token2wav/streaming.py)."""
        B = noise.shape[0]
        velocity_of = dit if dit is not None else self.dit
        guidance = solver.guidance_scale >= 1e-5  # none: the conditional rows alone (as the reference)
        rows = None if lengths is None else list(lengths) * (2 if guidance else 1)
        plan = self.dit.plan(noise.shape[1], noise.device, noise.dtype, rows)
        if not guidance:

            def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return velocity_of(x, t.reshape(1).expand(B), conditioning[:B], plan)

            return solve(velocity, noise, solver)

        def pair(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return velocity_of(torch.cat([x, x]), t.reshape(1).expand(2 * B), conditioning, plan)

        return solve(guided(pair, solver.guidance_scale), noise, solver)

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, vocoder: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Waveform [B, T * 240] from mel [B, T, mel_dim] (`vocoder`: default `self.bigvgan`; a compiled one)."""
        return (vocoder if vocoder is not None else self.bigvgan)(mel.to(self.dtype).transpose(1, 2))

    def waveform(
        self,
        codes: torch.Tensor,
        cond: torch.Tensor,
        ref_mel: torch.Tensor,
        noise: torch.Tensor,
        solver: SolverConfig | None = None,
    ) -> torch.Tensor:
        """Offline decode: [1, N * 480] samples at 24 kHz."""
        return self.vocode(self.sample_mel(codes, cond, ref_mel, noise, solver))
