"""Voices of the Talker/token2wav: the `spk_dict.pt` of a Qwen2.5-Omni checkpoint.

Per voice (Chelsie, Ethan in the release): `bos_token`, the Thinker-vocabulary id whose embedding starts
the Talker's speech track; `cond`, the speaker vector [1, 192] fed to every DiT frame; `ref_mel`
[1, T, 80], a reference mel the DiT's ECAPA-TDNN turns into a second speaker vector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.model.errors import CheckpointError

DEFAULT_VOICE = "Chelsie"


@dataclass(frozen=True)
class Voice:
    name: str
    bos_token: int
    cond: torch.Tensor  # [1, enc_emb_dim]
    ref_mel: torch.Tensor  # [1, T_ref, mel_dim]


class UnknownVoiceError(KeyError):
    """A voice name that the checkpoint does not have; the message lists the ones it has."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class VoiceBank:
    def __init__(self, voices: dict[str, Voice]) -> None:
        if not voices:
            raise CheckpointError("the voice table (spk_dict.pt) holds no voices")
        self.voices = voices

    @property
    def names(self) -> list[str]:
        return sorted(self.voices)

    @property
    def default(self) -> str:
        return DEFAULT_VOICE if DEFAULT_VOICE in self.voices else self.names[0]

    def get(self, name: str | None = None) -> Voice:
        """The voice called `name` (exact, else case-insensitive); None gives the default voice."""
        if name is None:
            return self.voices[self.default]
        if name in self.voices:
            return self.voices[name]
        folded = {n.lower(): v for n, v in self.voices.items()}
        if name.lower() in folded:
            return folded[name.lower()]
        raise UnknownVoiceError(f"unknown voice {name!r}; this checkpoint has: {', '.join(self.names)}")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VoiceBank:
        """Read spk_dict.pt ({name: {'bos_token', 'cond', 'ref_mel'}}) without unpickling arbitrary code."""
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"{p}: no voice table (spk_dict.pt is needed for speech output)")
        try:
            raw = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt or non-weights pickles
            raise CheckpointError(f"{p}: unreadable voice table ({type(e).__name__}: {e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{p}: expected a dict of voices, got {type(raw).__name__}")
        voices = {}
        for name, entry in raw.items():
            try:
                cond = torch.as_tensor(entry["cond"]).float().reshape(1, -1)
                ref = torch.as_tensor(entry["ref_mel"]).float()
                bos = int(entry["bos_token"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(
                    f"{p}: voice {name!r} must have 'bos_token', 'cond' and 'ref_mel' ({type(e).__name__}: {e})"
                ) from None
            ref = ref.reshape(1, *ref.shape[-2:]) if ref.dim() >= 2 else ref
            if ref.dim() != 3:
                raise CheckpointError(f"{p}: voice {name!r} ref_mel must be [1, T, mel], got {list(ref.shape)}")
            voices[str(name)] = Voice(name=str(name), bos_token=bos, cond=cond, ref_mel=ref)
        return cls(voices)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table in the checkpoint's format (used to make test checkpoints)."""
        torch.save(
            {v.name: {"bos_token": v.bos_token, "cond": v.cond, "ref_mel": v.ref_mel} for v in self.voices.values()},
            Path(path),
        )
