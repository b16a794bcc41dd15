"""Live audio equals the whole clip when a turn starts quietly (tiny random checkpoint, float32 on CPU).

The front end floors log-mel 80 dB below the loudest value: offline that of the whole clip, live that of the
audio so far. `ThinkerSession.push_audio` floors again, re-encodes and prefills again the blocks a louder part
changes, so the first reply logits match the whole-clip prompt. With a running floor alone these inputs
differed by 4e-4 to 9.4e-2 (last-position logits, relative; 0.37-s and 20-ms pieces), now by <= 6e-7.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.thinker_session import ThinkerSession
from tests.model.encoder_reference import rel_err
from tests.model.omni_tiny import save_tiny_omni

# Streamed and whole-clip prefill differ only in float32 summation order (measured <= 6e-7 here, ~1e-6 in
# test_thinker_parity); the bound is 1e-3, and a block floored at the wrong peak moved the logits by
# 4.5e-3 (0.5 s at 1e-3 first) to 9.4e-2 (1.5 s at 1e-4 first), so 1e-4 separates right from wrong.
REL_TOL = 1e-4
PIECE = 5920  # 0.37 s: pieces that do not line up with the 2-s blocks


def chirp(seconds: float = 3.7, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return amplitude * np.sin(2 * np.pi * (100.0 * t + 400.0 * t * t))  # 100 Hz rising to ~3 kHz


def quiet(seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    """White noise of peak `amplitude` (0: digital silence)."""
    return amplitude * np.random.default_rng(seed).uniform(-1.0, 1.0, int(16000 * seconds))


LEAD_INS = {
    "0.3 s of digital silence": quiet(0.3, 0.0),
    "0.5 s at 1e-4": quiet(0.5, 1e-4),
    "1.5 s at 1e-4": quiet(1.5, 1e-4),
    "0.5 s at 1e-3": quiet(0.5, 1e-3),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedThinker:
    _, path = save_tiny_omni(tmp_path_factory.mktemp("omni") / "tiny")
    return load_thinker(path)


def live_logits(loaded: LoadedThinker, pcm: torch.Tensor, piece: int = PIECE) -> tuple[torch.Tensor, int]:
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.begin_audio()
    gained = sum(s.push_audio(pcm[i : i + piece]) for i in range(0, pcm.numel(), piece))
    gained += s.end_audio()
    s.add_text("hi")
    logits = s.end_user_turn()
    assert s.state.cache.length == s.prefilled_tokens  # blocks prefilled again replaced, never added to, the cache
    return logits, gained


def whole_clip_logits(loaded: LoadedThinker, pcm: torch.Tensor) -> tuple[torch.Tensor, int]:
    mel = loaded.model.audio_features(pcm, 16000)
    n = loaded.model.encode_audio(mel).shape[0]
    p = loaded.prompt
    ids = p.system_turn() + p.turn_start("user") + p.audio(n) + p.text("hi") + p.generation_prompt()
    return loaded.model.prompt_logits(torch.tensor(ids), audio_mels=[mel])[-1], n


@pytest.mark.parametrize("lead_in", list(LEAD_INS))
def test_quiet_lead_in_live_equals_the_whole_clip(loaded: LoadedThinker, lead_in: str) -> None:
    pcm = torch.from_numpy(np.concatenate([LEAD_INS[lead_in], chirp()]).astype(np.float32))
    got, gained = live_logits(loaded, pcm)
    want, n_audio = whole_clip_logits(loaded, pcm)
    assert gained == n_audio
    assert rel_err(got, want) < REL_TOL, rel_err(got, want)


def test_loud_first_never_prefills_a_block_again(loaded: LoadedThinker, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the loudest part first the floor never moves after the first block: nothing is rolled back."""
    pcm = torch.from_numpy(np.concatenate([chirp(2.5, 0.9), chirp(3.0, 0.3)]).astype(np.float32))
    rollbacks: list[int] = []
    roll_back = ThinkerSession._roll_back
    monkeypatch.setattr(ThinkerSession, "_roll_back", lambda s, n, i: rollbacks.append(n) or roll_back(s, n, i))
    got, _ = live_logits(loaded, pcm)
    want, _ = whole_clip_logits(loaded, pcm)
    assert rollbacks == []
    assert rel_err(got, want) < REL_TOL


def test_a_block_floored_too_low_is_prefilled_again(loaded: LoadedThinker, monkeypatch: pytest.MonkeyPatch) -> None:
    """2.5 s at 1e-4 fills the first block; the chirp after it raises the floor past it: one roll-back, to
    the first block."""
    pcm = torch.from_numpy(np.concatenate([quiet(2.5, 1e-4, seed=3), chirp()]).astype(np.float32))
    rollbacks: list[int] = []
    roll_back = ThinkerSession._roll_back
    monkeypatch.setattr(ThinkerSession, "_roll_back", lambda s, n, i: rollbacks.append(n) or roll_back(s, n, i))
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.begin_audio()
    first_block_at = s.state.cache.length
    assert s.push_audio(pcm[:40000]) == 50  # the quiet block, prefilled at once
    assert s.push_audio(pcm[40000:]) == 100 and rollbacks == [first_block_at]  # it again, and the next
