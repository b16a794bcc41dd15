"""The omni engine's model loading: a checkpoint's Thinker and speech half, of either family.

The family is read from config.json (omni/model/loaders/family.py): Qwen2.5-Omni loads through
omni/model/loaders/omni.py and omni/model/loaders/talker_weights.py, Qwen3-Omni through omni/model/qwen3/loader.py
and omni/model/qwen3/speech.py. `quant` quantises the decoders' projections weight-only after loading.
"""

from __future__ import annotations

import os

import torch

from omni.model.errors import CheckpointError
from omni.model.layers.quant_linear import quantize_decoder
from omni.model.loaders.family import QWEN3_OMNI_MOE, detect_family
from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3, quantize_qwen3
from omni.model.qwen3.speech import Qwen3SpeechModels, load_qwen3_speech

Loaded = LoadedThinker | LoadedQwen3  # a loaded Thinker of either family
Speech = SpeechModels | Qwen3SpeechModels  # a family's speech half


def load_models(
    model_dir: str | os.PathLike[str] | None, device: str, dtype: torch.dtype | None, speak: bool,
    quant: str | None = None,
) -> tuple[Loaded, Speech | None]:
    """The checkpoint's Thinker, and its speech half when `speak` (and the checkpoint has one: a Qwen3-Omni
    Thinking or Captioner checkpoint has no talker.*). ValueError naming the checkpoint problem."""
    if model_dir is None:
        raise ValueError("OmniEngine needs a checkpoint directory (model_dir) or loaded models")
    try:
        if detect_family(model_dir) == QWEN3_OMNI_MOE:
            q = load_qwen3(model_dir, dtype, device)
            speaks = speak and "talker." in q.speech_prefixes
            q3 = load_qwen3_speech(model_dir, dtype or q.model.lm.dtype, device, q.index) if speaks else None
            if quant is not None:
                quantize_qwen3(q.model, q3.talker if q3 is not None else None, quant)
            return q, q3
        thinker = load_thinker(model_dir, dtype, device)
        speech = load_speech(model_dir, dtype or thinker.model.lm.dtype, device) if speak else None
        if quant is not None:
            quantize_decoder(thinker.model.lm, quant)
            if speech is not None:  # the Talker's decoder too
                quantize_decoder(speech.talker.decoder, quant)
    except CheckpointError as e:
        raise ValueError(f"cannot load the omni model: {e}") from None
    return thinker, speech
