"""Code2Wav weights from the released Qwen3-Omni key layout (`code2wav.*`, section 2.8 of the reference).

Our module names are the checkpoint's minus the `code2wav.` prefix, so loading is a checked copy; errors
name the checkpoint keys that are missing, unexpected or mis-shaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from omni.model.code2wav.config import Code2WavConfig
from omni.model.code2wav.model import Code2Wav
from omni.model.errors import CheckpointError

Getter = Callable[[str], "torch.Tensor | None"]


def _listing(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_code2wav(
    cfg: Code2WavConfig,
    names: Iterable[str],
    get: Getter,
    prefix: str = "code2wav.",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Code2Wav:
    """Code2Wav from the checkpoint tensors named `names` (all keys; those under `prefix` are used).

    float32 by default: on random weights bfloat16 rounding, amplified through SnakeBeta and the 1920x
    upsampling, moved the tiny model's waveform by a quarter of its peak (the released weights' bfloat16
    error is yet to be measured).
    """
    ours = {k[len(prefix) :] for k in names if k.startswith(prefix)}
    if not ours:
        raise CheckpointError(f"no {prefix}* tensors: this checkpoint has no Code2Wav (speech output) weights")
    model = Code2Wav(cfg).to(dtype=dtype)
    own = model.state_dict()
    missing = set(own) - ours
    if missing:
        raise CheckpointError(
            f"Code2Wav weights are incomplete: missing {len(missing)} of {len(own)} tensors "
            f"({_listing(prefix + k for k in missing)}); expected the released Qwen3-Omni key layout"
        )
    unexpected = ours - set(own)
    if unexpected:
        raise CheckpointError(
            f"Code2Wav weights have unexpected tensors ({_listing(prefix + k for k in unexpected)}): "
            "does code2wav_config match the weights?"
        )
    with torch.no_grad():
        for key, param in own.items():
            t = get(prefix + key)
            if t is None:
                raise CheckpointError(f"Code2Wav tensor {prefix + key!r} is listed but could not be read")
            if tuple(t.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"Code2Wav tensor {prefix + key!r} has shape {list(t.shape)}, expected {list(param.shape)} "
                    "from code2wav_config: does config.json match the weights?"
                )
            param.copy_(t.to(dtype=param.dtype))
    return model.to(device).eval()
