"""The flow-matching ODE solve of token2wav: time grid with sway sampling, classifier-free guidance, RK4.

As the released model runs it: 10 time points t = linspace(0, 1, 10) bent by sway sampling
(t += s * (cos(pi t / 2) - 1 + t), s = -1, i.e. t = 1 - cos(pi t / 2): small steps near the noise end),
9 intervals of the 3/8-rule Runge-Kutta (4 velocity evaluations each -> 36 DiT forwards, each with the
conditional and the unconditional branch as a batch of 2), guidance v = v_c + 0.5 (v_c - v_u).
Euler (9 evaluations) is offered as the cheaper option some deployments use; it is not the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t [0-d], x [B, T, mel]) -> [B, T, mel]


@dataclass(frozen=True)
class SolverConfig:
    num_steps: int = 10  # time points (intervals = num_steps - 1)
    guidance_scale: float = 0.5
    sway_coefficient: float | None = -1.0
    method: str = "rk4"  # "rk4" (3/8 rule, the reference) or "euler"

    def __post_init__(self) -> None:
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")
        if self.method not in ("rk4", "euler"):
            raise ValueError(f"ODE method must be 'rk4' or 'euler', got {self.method!r}")

    @property
    def evaluations(self) -> int:
        return (self.num_steps - 1) * (4 if self.method == "rk4" else 1)


def time_grid(cfg: SolverConfig, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    t = torch.linspace(0, 1, cfg.num_steps, dtype=dtype, device=device)
    if cfg.sway_coefficient is not None:
        t = t + cfg.sway_coefficient * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


def rk4_38_step(f: Velocity, t0: torch.Tensor, t1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One 3/8-rule Runge-Kutta step from t0 to t1 (operation order kept from the reference for parity)."""
    dt = t1 - t0
    third = 1 / 3
    k1 = f(t0, x)
    k2 = f(t0 + dt * third, x + dt * k1 * third)
    k3 = f(t0 + dt * (2 / 3), x + dt * (k2 - k1 * third))
    k4 = f(t1, x + dt * (k1 - k2 + k3))
    return x + (k1 + 3 * (k2 + k3) + k4) * dt / 8


def solve(f: Velocity, x0: torch.Tensor, cfg: SolverConfig) -> torch.Tensor:
    """Integrate dx/dt = f(t, x) from x0 (noise) over the time grid; returns x at t = 1."""
    t = time_grid(cfg, x0.dtype, x0.device)
    x = x0
    for i in range(cfg.num_steps - 1):
        if cfg.method == "rk4":
            x = rk4_38_step(f, t[i], t[i + 1], x)
        else:
            x = x + (t[i + 1] - t[i]) * f(t[i], x)
    return x


def guided(velocity_pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float) -> Velocity:
    """Classifier-free guidance around a function returning [2B, T, mel] (conditional rows first)."""

    def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cond, uncond = velocity_pair(t, x).chunk(2, dim=0)
        return cond + (cond - uncond) * scale

    return f
