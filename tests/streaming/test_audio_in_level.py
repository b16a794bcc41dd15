"""The live input stage hears what the offline front end hears: same samples, same log-mel, same level.

Input is made the way a call delivers it: stereo PCM encoded by aiortc's Opus encoder and decoded by its
Opus decoder (48 kHz s16 packed stereo av.AudioFrames, 20 ms each), then handed to the session as
`omni.app.realtime_server` does (`frame.to_ndarray()`, `len(frame.layout.channels)`). The offline side gets the
same decoded PCM, planar, through `to_mono_16k`; and the turn through the Thinker's streaming front end gives the
whole clip's logits. A loudness VAD stands in for silero so that a pure tone opens
a turn (silero does not call a tone speech).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from omni.model.encoders.audio_frontend import to_mono_16k
from omni.model.loaders.omni import load_thinker
from omni.model.thinker_session import ThinkerSession
from omni.streaming.audio_in import AudioInStage, TurnAudio
from omni.streaming.frames import AudioFrame
from omni.streaming.vad import CHUNK, TurnConfig
from tests.model.encoder_reference import rel_err
from tests.model.omni_tiny import save_tiny_omni
from tests.model.test_thinker_lead_in import REL_TOL, whole_clip_logits

RATE, FRAME = 48000, 960  # Opus in WebRTC: 48 kHz, 20 ms frames


class LoudnessVad:
    """In-memory stand-in for SileroVad: a chunk is speech when its RMS is above 0.01 (-40 dBFS)."""

    def init_state(self) -> None:
        return None

    def step(self, state: None, chunk: np.ndarray) -> float:
        assert chunk.shape == (CHUNK,)
        return 1.0 if float(np.sqrt(np.mean(chunk**2))) > 0.01 else 0.0


def through_opus(left: np.ndarray, right: np.ndarray) -> list[av.AudioFrame]:
    """float32 channels at 48 kHz -> the decoded frames aiortc's receiver hands to the track."""
    packed = np.stack([left, right], axis=1).reshape(1, -1)  # L R L R ...
    pcm = np.clip(np.rint(packed * 32767), -32768, 32767).astype(np.int16)
    enc, dec = OpusEncoder(), OpusDecoder()
    decoded: list[av.AudioFrame] = []
    for k in range(pcm.shape[1] // (2 * FRAME)):
        frame = av.AudioFrame.from_ndarray(pcm[:, 2 * FRAME * k : 2 * FRAME * (k + 1)].copy(), format="s16",
                                           layout="stereo")
        frame.sample_rate, frame.pts = RATE, k * FRAME
        payloads, timestamp = enc.encode(frame)
        for payload in payloads:
            decoded += dec.decode(JitterFrame(payload, timestamp))
    return decoded


def live_and_offline(frames: list[av.AudioFrame]) -> tuple[list[np.ndarray], np.ndarray]:
    """(the turn's audio pieces as the live stage gives them to the engine, the offline 16 kHz samples at
    their span)."""
    stage = AudioInStage(LoudnessVad(), 16000)  # type: ignore[arg-type]
    st = stage.init_state(TurnConfig(silence_ms=300, pause_ms=0))
    out = []
    for k, f in enumerate(frames):  # as omni.app.rtc_media.pump_track hands them on
        out += stage.process(st, [AudioFrame(f.to_ndarray(), f.sample_rate, k * FRAME / RATE, len(f.layout.channels))])
    audio = [e for e in out if isinstance(e, TurnAudio)]
    assert audio, "no turn was detected"
    live = np.concatenate([a.pcm for a in audio])
    planar = np.concatenate([f.to_ndarray().reshape(-1, 2).T for f in frames], axis=1)  # [2, N] int16
    offline = to_mono_16k(planar, RATE).numpy()
    start = round(audio[0].timestamp * 16000)
    # the stage's timestamps are frame times; the resampler's delay (a few samples) is not in them: align by
    # the smallest difference within +-32 samples (2 ms)
    shifts = range(max(0, start - 32), start + 33)
    best = min(shifts, key=lambda s: float(np.abs(offline[s : s + len(live)] - live).max()))
    return [a.pcm for a in audio], offline[best : best + len(live)]


def tone_with_silence(freq: float, peak: float) -> np.ndarray:
    t = np.arange(int(1.2 * RATE)) / RATE
    x = peak * np.sin(2 * np.pi * freq * t)
    quiet = np.zeros(int(0.6 * RATE))
    return np.concatenate([quiet, x, quiet]).astype(np.float32)


def test_two_equal_channels_keep_their_level_live() -> None:
    """A 0.25-peak tone on both channels reaches the engine at 0.25 (libswresample's mono mix made it 0.354)."""
    x = tone_with_silence(440.0, 0.25)
    pieces, offline = live_and_offline(through_opus(x, x))
    live = np.concatenate(pieces)
    onset = int(np.argmax(np.abs(live) > 0.05))  # the turn starts with prefix_ms of silence
    steady = live[onset + 3200 : onset + 16000]  # 0.2-1.0 s into the 1.2 s tone: past Opus's onset overshoot
    # Opus at 96 kb/s and the 48 -> 16 kHz filter leave a 440 Hz tone's peak within 1% (measured 0.2504)
    assert abs(float(np.abs(steady).max()) - 0.25) < 0.0025
    np.testing.assert_array_equal(live, offline)


def call_audio(seed: int, seconds: float = 1.2) -> list[av.AudioFrame]:
    """A chirp on one channel, noise on the other (the mix is neither channel), 0.6 s of silence each side."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    left = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t)
    right = 0.1 * rng.standard_normal(n)
    quiet = np.zeros(int(0.6 * RATE))
    return through_opus(np.concatenate([quiet, left, quiet]).astype(np.float32),
                        np.concatenate([quiet, right, quiet]).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_live_stereo_gives_the_offline_samples(seed: int) -> None:
    pieces, offline = live_and_offline(call_audio(seed))
    live = np.concatenate(pieces)
    assert len(live) > 16000  # the whole chirp's turn, over 1 s
    # the same int16 -> float, channel mean and resampler on the same samples: equal to the last bit
    np.testing.assert_array_equal(live, offline)


def test_live_call_audio_reaches_the_thinker_as_the_offline_clip(tmp_path: Path) -> None:
    """The turn's pieces, as the engine gets them (quiet prefix first), through ThinkerSession.push_audio: the
    streamed log-mel and prefill give the first reply logits of the offline clip."""
    pieces, offline = live_and_offline(call_audio(seed=2, seconds=3.0))  # over 2 s: a block before the end
    _, path = save_tiny_omni(tmp_path / "tiny")
    loaded = load_thinker(path)
    s = ThinkerSession(loaded.model, loaded.prompt)
    s.start_user_turn()
    s.begin_audio()
    for pcm in pieces:
        s.push_audio(torch.from_numpy(pcm))
    s.end_audio()
    s.add_text("hi")
    got = s.end_user_turn()
    want, _ = whole_clip_logits(loaded, torch.from_numpy(offline))
    assert rel_err(got, want) < REL_TOL  # (the bound and why: tests/model/test_thinker_lead_in.py)
