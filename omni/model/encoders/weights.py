"""Loading encoder weights from a state dict in the released Qwen2.5-Omni / Qwen3-Omni key layout, with errors that
name what is missing or mis-shaped (a truncated shard otherwise surfaces as garbage output)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from omni.model.errors import CheckpointError

AUDIO_PREFIX = "thinker.audio_tower."  # both generations keep their audio encoder here
VISION_PREFIX = "thinker.visual."


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` (e.g. "thinker.audio_tower."), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _summary(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_encoder_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    optional: Iterable[str] = (),
) -> None:
    """Copy `state_dict` (keys relative to the encoder, as in the checkpoint minus its prefix) into `module`.

    Raises CheckpointError naming the encoder, the missing/unexpected keys and any shape mismatch.
    Keys in `optional` may be absent (weights the forward pass never reads). Values are cast to each
    parameter's dtype and device.
    """
    own = dict(module.state_dict())
    optional = set(optional)
    missing = set(own) - set(state_dict) - optional
    if missing:
        raise CheckpointError(
            f"{what} weights are incomplete: missing {len(missing)} of {len(own)} tensors "
            f"({_summary(missing)}); expected the released Qwen-Omni key layout "
            "(thinker.audio_tower.* / thinker.visual.* with the prefix removed)"
        )
    unexpected = set(state_dict) - set(own)
    if unexpected:
        raise CheckpointError(f"{what} weights have unexpected tensors: {_summary(unexpected)}")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{what} tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)} "
                "from the config: does config.json match the weights?"
            )
    with torch.no_grad():
        for key, value in state_dict.items():
            own[key].copy_(value.to(dtype=own[key].dtype, device=own[key].device))
