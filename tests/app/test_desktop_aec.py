"""`omni desktop` with echo cancellation (the `aec` extra, WebRTC AEC3 through pywebrtc-audio): the canceller on
a synthetic echo, then whole conversations on PulseAudio virtual devices whose speaker is looped back into the
microphone (`EchoingDesktop`, as open loudspeakers do), full duplex: the assistant's own voice neither starts a
turn nor interrupts the reply, while the user talking over the reply still does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.spoken import read_wav, write_wav
from omni.app.desktop import Desktop, DesktopOptions
from omni.app.desktop_audio import BLOCK, RATE, EchoCanceller, aec_available
from omni.streaming.engines.tone import ToneEngine
from tests.app.test_desktop import converse, loud_seconds, pulse  # noqa: F401 (fixture)
from tests.streaming.conftest import make_speech_wav

pytestmark = pytest.mark.skipif(aec_available() is not None, reason=str(aec_available()))

ANSWER = ("The capital of France is Paris. It lies on the river Seine, in the north of the country, "
          "and has been its capital for more than a thousand years.")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """espeak-ng speech, int16: the assistant's answer at 24 kHz (the engine's rate) and 48 kHz, and a user's
    interjection at 48 kHz."""
    d = tmp_path_factory.mktemp("aec")
    return {
        "answer24": read_wav(make_speech_wav(d / "a24.wav", ANSWER, 24000))[0],
        "answer48": read_wav(make_speech_wav(d / "a48.wav", ANSWER, 48000))[0],
        "user48": read_wav(make_speech_wav(d / "u48.wav", "Wait, stop, I have another question for you.", 48000))[0],
    }


class SpeakingEngine(ToneEngine):
    """The tone engine with speech instead of tones: each word's audio is the next piece of a spoken answer,
    so the echo is speech, which the session's VAD does take for the user (a tone it might not)."""

    def __init__(self, speech24k: np.ndarray, **kw: Any) -> None:
        super().__init__(**kw)
        self.speech = speech24k.astype(np.float32) / 32768
        self.pos = 0

    def tone(self, chars: int, index: int) -> np.ndarray:
        n = max(int(self.output_sample_rate * self.seconds_per_char * max(chars, 1)), self.output_sample_rate // 50)
        if index == 0:
            self.pos = 0
        piece = np.resize(np.roll(self.speech, -self.pos), n)
        self.pos = (self.pos + n) % len(self.speech)
        return piece


def test_echo_canceller_removes_a_synthetic_echo_and_keeps_the_users_voice(spoken: dict[str, np.ndarray]) -> None:
    far = spoken["answer48"][: len(spoken["answer48"]) // BLOCK * BLOCK]
    delay = int(0.12 * RATE)  # 120 ms from the speaker callback to the microphone
    echo = np.zeros(len(far), np.float32)
    echo[delay:] = 0.5 * far[:-delay]  # -6 dB: a laptop's speaker close to its microphone
    user = np.zeros(len(far), np.float32)
    u = spoken["user48"][: len(far) // 3]
    at = len(far) - len(u) - RATE // 2  # the user talks over the last part of the answer (double talk)
    user[at : at + len(u)] = u
    aec = EchoCanceller()
    out_echo, out_both = [], []
    aec2 = EchoCanceller()
    for i in range(0, len(far), BLOCK):
        aec.played(far[i : i + BLOCK])
        out_echo.append(aec.filter(echo[i : i + BLOCK].astype(np.int16)))
        aec2.played(far[i : i + BLOCK])
        out_both.append(aec2.filter(np.clip(echo[i : i + BLOCK] + user[i : i + BLOCK], -32768, 32767).astype(np.int16)))
    cleaned = np.concatenate(out_echo).astype(np.float64)
    both = np.concatenate(out_both).astype(np.float64)
    settled = slice(2 * RATE, at)  # after 2 s of adaptation, before the user talks
    erle = 10 * np.log10(np.sum(echo[settled].astype(np.float64) ** 2) / max(np.sum(cleaned[settled] ** 2), 1.0))
    # The user's voice through the canceller during double talk, against the user's voice alone.
    span = slice(at, at + len(u))
    kept = 10 * np.log10(np.sum(both[span] ** 2) / np.sum(user[span].astype(np.float64) ** 2))
    us = aec.seconds / aec.blocks * 1e6
    print(f"\nAEC3 (48 kHz): echo reduction {erle:.1f} dB after 2 s (overall {aec.reduction_db():.1f} dB), "
          f"user's voice during double talk {kept:+.1f} dB, {us:.0f} us per 10 ms block")
    assert erle > 20.0
    assert kept > -10.0, "the canceller removed the user's voice along with the echo"


class EchoingDesktop(Desktop):
    """A desktop whose microphone also hears its own speaker, as open loudspeakers do: the k-th microphone block
    gets `gain` x the (k - `delay`)-th block the speaker callback played (120 ms, -6 dB by default). Counted in
    blocks, so the echo path is fixed, as in a room whose speaker and microphone share a sound card's clock.
    (PulseAudio's module-loopback was tried first: its echo path wanders, see the README's desktop notes.)"""

    delay = 12
    gain = 0.5

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._played: list[np.ndarray] = []  # written by the speaker thread, read by the microphone thread
        self._heard = 0

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        super()._output_callback(outdata, frames, time_info, status)
        self._played.append(outdata[:, 0].copy())

    def _input_callback(self, mic: Any) -> Callable[..., None]:
        inner = super()._input_callback(mic)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            k, self._heard = self._heard, self._heard + 1
            if 0 <= k - self.delay < len(self._played):
                echo = self._played[k - self.delay][: len(indata)].astype(np.float32) * self.gain
                mixed = np.clip(indata[:, 0].astype(np.float32) + echo, -32768, 32767).astype(np.int16)
                indata = mixed[:, None]
            inner(indata, frames, time_info, status)
        return callback


def question_wav(tmp_path: Path, interject_after: float | None) -> tuple[Path, float]:
    """1 s of silence, a question, then (when `interject_after` is given) the user's interjection that many
    seconds after the question ended; 5 s of silence at the end. Returns the file and when the interjection
    starts (seconds from the start; inf without one)."""
    q, _ = read_wav(make_speech_wav(tmp_path / "q.wav", "Hello there, what is the capital of France?", 48000))
    parts = [np.zeros(RATE, np.int16), q]
    onset = float("inf")
    if interject_after is not None:
        gap = np.zeros(int(interject_after * RATE), np.int16)
        onset = (RATE + len(q) + len(gap)) / RATE
        u, _ = read_wav(make_speech_wav(tmp_path / "u.wav", "Wait, stop, I have another question for you.", 48000))
        parts += [gap, u]
    parts.append(np.zeros(5 * RATE, np.int16))
    wav = tmp_path / "conversation.wav"
    write_wav(wav, np.concatenate(parts), RATE)
    return wav, onset


def starts(events: list[dict[str, Any]]) -> list[float]:
    return [e["_t"] for e in events if e["type"] == "input_audio_buffer.speech_started"]


async def test_aec_keeps_the_assistants_voice_out_on_open_speakers(
    pulse: dict[str, str], spoken: dict[str, np.ndarray], tmp_path: Path  # noqa: F811
) -> None:
    """Full duplex on looped-back speakers: without the canceller the assistant interrupts itself (the control
    run, which shows the echo is loud enough to matter); with it, the reply plays to the end."""
    wav, _ = question_wav(tmp_path, None)
    results = {}
    # The control run may take up to three tries: on a loaded machine an ALSA underrun can cut the reply's playback
    # (and so its echo) short, and a control that shows no echo proves nothing either way.
    for mode in ("off", "off", "off", "aec"):
        if mode == "off" and "off" in results and len(starts(results["off"][1].events)) > 1:
            continue
        engine = SpeakingEngine(spoken["answer24"], step_delay=0.15)
        opts = DesktopOptions("pulse", "pulse", half_duplex=False, aec=mode == "aec")
        results[mode] = await converse(pulse, engine, wav, "response.done", limit=60, options=opts,
                                       desktop_cls=EchoingDesktop)
    desktop, printer, speaker, _ = results["aec"]
    aec = desktop.aec
    assert aec is not None
    off_events = results["off"][1].events
    print(f"\necho off: speech starts at {starts(off_events)} s, replies "
          f"{[e['response']['status'] for e in off_events if e['type'] == 'response.done']}")
    print(f"echo aec: speech starts at {starts(printer.events)} s, echo reduction {aec.reduction_db():.1f} dB over "
          f"{aec.blocks} blocks, {aec.seconds / max(aec.blocks, 1) * 1e6:.0f} us per 10 ms, "
          f"speaker loud {loud_seconds(speaker):.2f} s, status flags {desktop.status_flags}")
    # The control: the echo alone starts a turn while the assistant speaks.
    assert len(starts(off_events)) > 1, "without the canceller the echo did not come back: the test shows nothing"
    done = [e for e in printer.events if e["type"] == "response.done"]
    assert done and done[0]["response"]["status"] == "completed", "the reply was interrupted by its own echo"
    assert len(starts(printer.events)) == 1, "the assistant's echo started a turn"
    assert loud_seconds(speaker) > 1.0, "the reply did not reach the speaker"
    assert aec.reduction_db() > 10.0


async def test_aec_lets_the_user_barge_in_over_the_reply(
    pulse: dict[str, str], spoken: dict[str, np.ndarray], tmp_path: Path  # noqa: F811
) -> None:
    """With the canceller on looped-back speakers, the user's interjection (while the reply plays) interrupts
    it, and nothing before the interjection did."""
    wav, onset = question_wav(tmp_path, 2.5)
    engine = SpeakingEngine(spoken["answer24"], step_delay=0.25)
    opts = DesktopOptions("pulse", "pulse", half_duplex=False, aec=True)
    desktop, printer, speaker, _ = await converse(pulse, engine, wav, "output_audio_buffer.cleared", limit=60,
                                                  options=opts, desktop_cls=EchoingDesktop)
    events = printer.events
    kinds = [e["type"] for e in events]
    t = starts(events)
    aec = desktop.aec
    assert aec is not None and desktop.mic is not None
    print(f"\naec barge-in: interjection at {onset:.2f} s, speech starts at {t} s; mic dropped {desktop.mic.dropped}, "
          f"far dropped {aec.far_dropped}, far backlog {aec.backlog[0]}-{aec.backlog[1]} blocks, "
          f"echo reduction (double talk included) {aec.reduction_db():.1f} dB")
    assert "output_audio_buffer.cleared" in kinds, "the interjection did not interrupt the reply"
    created = next(e["_t"] for e in events if e["type"] == "response.created")
    cleared = next(e for e in events if e["type"] == "output_audio_buffer.cleared")
    assert loud_seconds(speaker) > 0.3, "the reply did not reach the speaker"
    # No speech start between the reply's start and the interjection: the barge-in was the user's.
    assert not [s for s in t if created < s < onset], f"the echo started a turn at {t} (reply at {created:.2f} s)"
    assert cleared["_t"] >= onset
    # The conversation went on to the end of the file, through the second reply: its echo started no turn either.
    assert len(t) == 2 and kinds.count("response.created") == 2, f"speech starts at {t}"
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "cancelled"
