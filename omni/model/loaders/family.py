"""Which Omni model family a checkpoint directory holds, from its config.json.

`omni serve --engine omni` and `omni chat` load either generation; this says which before anything is built.
The released configs name the family twice: `architectures` (the transformers class) and `model_type`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omni.model.errors import CheckpointError
from omni.model.loaders.hf import read_config

QWEN2_5_OMNI = "qwen2_5_omni"
QWEN3_OMNI_MOE = "qwen3_omni_moe"

# transformers class name -> family; the thinker-only classes are how a Thinker saved on its own is named.
ARCHITECTURES = {
    "Qwen2_5OmniForConditionalGeneration": QWEN2_5_OMNI,
    "Qwen2_5OmniModel": QWEN2_5_OMNI,
    "Qwen2_5OmniThinkerForConditionalGeneration": QWEN2_5_OMNI,
    "Qwen3OmniMoeForConditionalGeneration": QWEN3_OMNI_MOE,
    "Qwen3OmniMoeThinkerForConditionalGeneration": QWEN3_OMNI_MOE,
}
MODEL_TYPES = {
    "qwen2_5_omni": QWEN2_5_OMNI,
    "qwen2_5_omni_thinker": QWEN2_5_OMNI,
    "qwen3_omni_moe": QWEN3_OMNI_MOE,
    "qwen3_omni_moe_thinker": QWEN3_OMNI_MOE,
}
FAMILIES = (QWEN2_5_OMNI, QWEN3_OMNI_MOE)


def family_of_config(raw: dict[str, Any], where: str = "config.json") -> str:
    """"qwen2_5_omni" or "qwen3_omni_moe" for a config.json dict; CheckpointError for anything else.

    `architectures` wins when it names a known class; `model_type` decides otherwise. The two disagreeing
    (an edited config) is an error, as is a config naming neither family.
    """
    archs = raw.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    by_arch = {ARCHITECTURES[a] for a in archs if a in ARCHITECTURES}
    model_type = raw.get("model_type")
    by_type = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if len(by_arch) > 1:
        raise CheckpointError(f"{where}: architectures {archs} name more than one model family")
    if by_arch and by_type and by_arch != {by_type}:
        raise CheckpointError(
            f"{where}: architectures {archs} ({by_arch.pop()}) disagree with model_type {model_type!r} ({by_type})"
        )
    family = next(iter(by_arch), None) or by_type
    if family is None:
        raise CheckpointError(
            f"{where}: not an Omni checkpoint this runtime serves (architectures {archs or None}, model_type "
            f"{model_type!r}); supported: Qwen2.5-Omni ({', '.join(_names(QWEN2_5_OMNI))}) and Qwen3-Omni "
            f"({', '.join(_names(QWEN3_OMNI_MOE))})"
        )
    return family


def detect_family(directory: str | os.PathLike[str]) -> str:
    """The family of a checkpoint directory, read from its config.json."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such checkpoint directory")
    return family_of_config(read_config(d), str(d / "config.json"))


def _names(family: str) -> list[str]:
    return sorted(a for a, f in ARCHITECTURES.items() if f == family and a.endswith("ForConditionalGeneration"))
