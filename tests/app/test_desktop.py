"""`omni desktop`: the buffers and the echo gate on their own, then whole conversations through PulseAudio
virtual devices (a private daemon with two null sinks: `mic`, whose monitor is the microphone, fed by paplay;
`spk`, the speaker, recorded from its monitor by parec)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.devices import pulse_missing, start_pulse
from benchmarks.spoken import write_wav
from omni.app.desktop import FRAME, Conversation, Desktop, DesktopOptions, LocalConversation, Printer
from omni.app.desktop_audio import HalfDuplexGate, MicQueue, SpeakerRing
from omni.app.desktop_remote import RemoteConversation
from omni.model.pcm import resample, to_float32
from omni.streaming.engine import TranscriptDelta
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.vad import TurnConfig
from tests.app.conftest import StartServer
from tests.app.test_serve_embedded import engine, france48k, smollm  # noqa: F401 (fixtures)
from tests.streaming.conftest import make_speech_wav


def twice_wav(tmp_path: Path) -> Path:
    """1 s of silence (the microphone stream settles), the question, 2.5 s, the question again: it comes while
    the tone engine's reply (15 words at 0.25 s each) is still being made and played, and interrupts it."""
    from benchmarks.spoken import read_wav

    q = make_speech_wav(tmp_path / "q.wav", "Hello there, can you hear me?", 48000, pad=2.5)
    speech, _ = read_wav(q)
    wav = tmp_path / "twice.wav"
    write_wav(wav, np.concatenate([np.zeros(48000, np.int16), speech, speech, np.zeros(48000, np.int16)]), 48000)
    return wav


def test_speaker_ring_keeps_order_across_the_wrap_and_clear_empties_it() -> None:
    ring = SpeakerRing(capacity=1000)
    x = np.arange(1, 2501, dtype=np.int16)
    got: list[np.ndarray] = []
    pos = 0
    while pos < len(x) or ring.available():
        pos += ring.write(x[pos : pos + 700])
        out = np.empty(480, np.int16)
        got.append(out[: ring.read_into(out)].copy())
    assert np.array_equal(np.concatenate(got), x)
    ring.write(x[:900])
    assert ring.clear() == 900 and ring.available() == 0
    out = np.ones(480, np.int16)
    assert ring.read_into(out) == 0 and not out.any()


async def test_mic_queue_is_bounded_and_drops_the_oldest() -> None:
    q = MicQueue(asyncio.get_running_loop(), capacity=3)
    for i in range(5):
        q.push(np.full(4, i, np.int16), float(i))
    firsts = [int((await q.get())[0][0]) for _ in range(3)]
    assert firsts == [2, 3, 4] and q.dropped == 2


def test_half_duplex_gate_holds_back_echo_and_lets_a_louder_voice_through() -> None:
    rng = np.random.default_rng(0)
    gate = HalfDuplexGate()
    played = (rng.standard_normal(480) * 6000).astype(np.int16)
    t = 0.0
    for _ in range(10):  # 0.1 s of assistant speech before its echo arrives: the gate stays shut
        gate.played(played, t)
        assert not gate.filter(np.zeros(480, np.int16), t).any()
        t += 0.01
    for _ in range(100):  # then 1 s of echo at half the level, held back all along (0.5 s of it measured)
        gate.played(played, t)
        assert not gate.filter((played * 0.5).astype(np.int16), t).any()
        t += 0.01
    assert 0.4 < gate.echo_gain < 0.6
    voice = (rng.standard_normal(480) * 12000).astype(np.int16)  # 4 x the echo: the user talks over it
    gate.played(played, t)
    assert np.array_equal(gate.filter(voice, t), voice)
    quiet = (rng.standard_normal(480) * 100).astype(np.int16)
    assert not gate.filter(quiet, t + 0.2).any()  # within the 0.3 s hangover: still held back
    assert np.array_equal(gate.filter(quiet, t + 0.4), quiet)  # after it: the microphone is open again


# ---- PulseAudio virtual devices ----


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon on a unix socket; PULSE_SERVER points this process (and its children) at it."""
    why = pulse_missing()
    if why:
        pytest.skip(why)
    try:
        daemon = start_pulse(tmp_path_factory.mktemp("pulse"))
    except RuntimeError as e:
        pytest.skip(str(e))
    yield daemon.env
    daemon.stop()


async def converse(env: dict[str, str], on: Any, wav: Path, until: str, camera: str | None = None,
                   limit: float = 120.0, options: DesktopOptions | None = None, desktop_cls: type[Desktop] = Desktop
                   ) -> tuple[Desktop, Printer, np.ndarray, Any]:
    """Run a desktop conversation on PulseAudio: play `wav` into the microphone once both streams are open,
    record the speaker, stop at the event `until` (plus 1 s for the speaker to drain). Returns the desktop,
    its events, the recorded speaker (int16 48 kHz) and the conversation: local on the engine `on`, or, when `on`
    is a ws:// URL, the remote one (`omni desktop --server`). Each event gets `_played` (what the speaker had
    been given by then) and `_t` (seconds since the playback of `wav` was started; negative before)."""
    printer = Printer()
    done = asyncio.Event()
    play_t0 = float("inf")

    def emit(ev: dict[str, Any]) -> None:
        desktop.on_event(ev)
        printer(ev)
        ev["_played"] = desktop.ring.played_samples  # what the speaker had been given by this event
        ev["_t"] = time.monotonic() - play_t0 if play_t0 != float("inf") else -1.0
        if ev["type"] == until:
            done.set()

    conv: Conversation = (RemoteConversation(on, emit) if isinstance(on, str)
                          else LocalConversation(on, emit, TurnConfig(silence_ms=400)))
    desktop = desktop_cls(conv, options or DesktopOptions("pulse", "pulse", camera))
    rec_path = wav.with_suffix(".speaker.raw")
    with open(rec_path, "wb") as rec_file:  # noqa: ASYNC230 (opening a local file: microseconds)
        rec = subprocess.Popen(  # noqa: ASYNC220 (parec runs beside the loop; only its exit is waited for)
            ["parec", "-d", "spk.monitor", "--format=s16le", "--rate=48000", "--channels=1", "--raw"],
            env=env, stdout=rec_file,
        )
        task = asyncio.get_running_loop().create_task(desktop.run())
        try:
            started = asyncio.ensure_future(desktop.started.wait())
            await asyncio.wait({task, started}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # the streams failed to open: raise why
            assert desktop.started.is_set(), "the sound streams did not open within 60 s"
            play_t0 = time.monotonic()
            play = await asyncio.create_subprocess_exec("paplay", "-d", "mic", str(wav), env=env)
            try:
                await asyncio.wait_for(done.wait(), limit)
            except TimeoutError:
                pass  # the caller's assertions say what was missing
            await asyncio.sleep(1.0)
            await play.wait()
        finally:
            desktop.stop()
            await task
            rec.terminate()
            rec.wait(10)
    return desktop, printer, np.fromfile(rec_path, "<i2"), conv


def opening(pcm: np.ndarray, seconds: float = 3.0) -> np.ndarray:
    """The first `seconds` from the first loud 10 ms block on (0.2 s before it included)."""
    blocks = pcm[: len(pcm) // 480 * 480].astype(np.float32).reshape(-1, 480)
    loud = np.flatnonzero(np.sqrt((blocks**2).mean(1)) > 300)
    start = max(0, int(loud[0]) - 20) * 480 if len(loud) else 0
    return pcm[start : start + int((seconds + 0.2) * 48000)]


def loud_seconds(pcm: np.ndarray, threshold: float = 300.0) -> float:
    blocks = pcm[: len(pcm) // 480 * 480].astype(np.float32).reshape(-1, 480)
    return float((np.sqrt((blocks**2).mean(1)) > threshold).sum() * 0.01)


async def test_desktop_barge_in_clears_the_speaker_and_the_camera_feeds_the_engine(
    pulse: dict[str, str], tmp_path: Path
) -> None:
    wav = twice_wav(tmp_path)
    tone = ToneEngine(step_delay=0.25)
    desktop, printer, speaker, _ = await converse(
        pulse, tone, wav, "output_audio_buffer.cleared", camera="lavfi:testsrc2=size=320x240:rate=15,realtime"
    )
    kinds = [e["type"] for e in printer.events]
    gate = desktop.gate
    assert gate is not None
    print(f"\ndesktop: events {kinds}; gate held back {gate.suppressed_blocks} blocks, echo gain {gate.echo_gain:.2f}")
    cleared = kinds.index("output_audio_buffer.cleared")
    # What the speaker was given from the barge-in until the next reply started (or the end).
    until = next((e["_played"] for e in printer.events[cleared:] if e["type"] == "response.created"),
                 desktop.ring.played_samples)
    after = until - printer.events[cleared]["_played"]
    print(f"\ndesktop: speech starts dropped {desktop.barge_ins} queued samples, {after} played after the barge-in, "
          f"speaker loud {loud_seconds(speaker):.2f} s, camera frames {desktop.camera_frames}, "
          f"engine saw {[s.video_frames for s in tone.sessions]} frames, status flags {desktop.status_flags}")
    first_reply = kinds.index("response.created")
    assert "input_audio_buffer.speech_started" in kinds[first_reply:], "the second question did not barge in"
    assert loud_seconds(speaker) > 0.3, "the assistant's reply did not reach the speaker"
    # From the barge-in on, at most two 20 ms frames of the old reply leave for the speaker (the ring holds 10).
    assert after <= 2 * FRAME
    assert desktop.camera_frames > 0 and sum(s.video_frames for s in tone.sessions) > 0


async def test_desktop_as_a_client_of_a_remote_server_speaks_and_barge_in_clears_it(
    pulse: dict[str, str], start_server: StartServer, tmp_path: Path
) -> None:
    """`omni desktop --server ws://...` against a real server (tone engine) over its Realtime WebSocket API."""
    tone = ToneEngine(step_delay=0.25)
    url, _ = await start_server(tone)
    desktop, printer, speaker, conv = await converse(pulse, url.replace("http://", "ws://"), twice_wav(tmp_path),
                                                     "response.done")
    kinds = [e["type"] for e in printer.events]
    print(f"\ndesktop --server: events {kinds}; speech starts dropped {desktop.barge_ins} queued samples, "
          f"speaker loud {loud_seconds(speaker):.2f} s, truncations sent {conv.truncations}")
    assert "error" not in kinds, [e for e in printer.events if e["type"] == "error"]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    first_reply = kinds.index("response.created")
    words = "".join(e["delta"] for e in printer.events if e["type"] == "response.output_audio_transcript.delta")
    assert words.startswith("Hello, I heard you speak for"), words
    assert loud_seconds(speaker) > 0.3, "the assistant's reply did not reach the speaker"
    barge = first_reply + kinds[first_reply:].index("input_audio_buffer.speech_started")
    done = printer.events[kinds.index("response.done")]
    assert done["response"]["status"] == "cancelled", "the second question did not interrupt the reply"
    # From the barge-in until the next reply (or the end), at most two 20 ms frames of the old reply leave.
    until = next((e["_played"] for e in printer.events[barge:] if e["type"] == "response.created"),
                 desktop.ring.played_samples)
    after = until - printer.events[barge]["_played"]
    assert after <= 2 * FRAME, f"{after} samples of the interrupted reply played after the barge-in"
    # The client told the server how much of the reply was played (conversation.item.truncate).
    assert len(conv.truncations) == 1 and conv.truncations[0][1] > 0


async def test_remote_desktop_sends_the_camera_with_the_users_turn(
    pulse: dict[str, str], start_server: StartServer, tmp_path: Path
) -> None:
    """`omni desktop --server ws://... --camera ...`: the latest frame goes up as an `input_image` when the user
    starts to speak, and the server's engine gets it in that turn."""
    tone = ToneEngine()
    url, _ = await start_server(tone)
    q = make_speech_wav(tmp_path / "q.wav", "Hello there, what do you see?", 48000, pad=1.0)
    desktop, printer, speaker, conv = await converse(pulse, url.replace("http://", "ws://"), q, "response.done",
                                                     camera="lavfi:testsrc2=size=320x240:rate=15,realtime")
    kinds = [e["type"] for e in printer.events]
    images = [s.images for s in tone.sessions]
    print(f"\ndesktop --server --camera: camera frames {desktop.camera_frames}, images sent {conv.images_sent}, "
          f"the engine got {images}; events {kinds}")
    assert "error" not in kinds, [e for e in printer.events if e["type"] == "error"]
    added = [e for e in printer.events if e["type"] == "conversation.item.added"]
    assert conv.images_sent == 1 and [p["type"] for p in added[0]["item"]["content"]] == ["input_image"]
    assert images[-1] == [(240, 320)], "the server's engine did not get the camera frame"
    # It joined the spoken turn: the item came between speech start and the reply.
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("conversation.item.added") \
        < kinds.index("response.created")
    assert kinds.count("response.done") == 1 and "Hello" in "".join(
        e["delta"] for e in printer.events if e["type"] == "response.output_audio_transcript.delta")


@pytest.mark.slow
async def test_desktop_speaks_the_answer_and_half_duplex_holds_back_its_own_voice(
    pulse: dict[str, str], engine: Any, france48k: np.ndarray, tmp_path: Path  # noqa: F811
) -> None:
    embedded = engine
    # The speaker's sound goes back into the microphone (module-loopback), as open speakers do.
    loop_id = subprocess.run(  # noqa: ASYNC221 (pactl answers in milliseconds)
        ["pactl", "load-module", "module-loopback", "source=spk.monitor", "sink=mic", "latency_msec=20"],
        env=pulse, check=True, capture_output=True, text=True,
    ).stdout.strip()
    wav = tmp_path / "france.wav"
    silence = np.zeros(48000, np.int16)
    write_wav(wav, np.concatenate([silence, france48k, silence]), 48000)
    try:
        desktop, printer, speaker, _ = await converse(pulse, embedded, wav, "output_audio_buffer.stopped", limit=180)
    finally:
        subprocess.run(["pactl", "unload-module", loop_id], env=pulse, check=True)  # noqa: ASYNC221
    # The speaker's recording, recognised by the engine's own recogniser: its opening (the answer, "The capital
    # of France is Paris", takes about 2 s; the small LM rambles on for 5 more with no pause to cut at) cut at
    # 2.5, 3, 3.5 and 4 s. The recogniser is the fragile instrument here: on one recording it heard "paris" only
    # in the 4 s cut ("there recent" in the 3 and 3.5 s ones), on others in all four; given all 7 s as one
    # utterance it lost "paris" in 3 of 5 runs.
    heard: list[str] = []
    for seconds in (2.5, 3.0, 3.5, 4.0):
        session = embedded.open_session()
        try:
            session.push_audio(resample(to_float32(opening(speaker, seconds)), 48000, embedded.input_sample_rate), 0.0)
            heard += [e.text for e in session.end_turn() if isinstance(e, TranscriptDelta) and e.final]
        finally:
            session.close()
    kinds = [e["type"] for e in printer.events]
    done = [e for e in printer.events if e["type"] == "response.done"]
    metrics = [e for e in printer.events if e["type"] == "omni.metrics"]
    gate = desktop.gate
    assert gate is not None
    print(f"\ndesktop (embedded): speaker said {heard!r}; metrics {metrics}; gate held back {gate.suppressed_blocks} "
          f"blocks ({gate.suppressed_loud} loud), echo gain {gate.echo_gain:.2f}; status flags {desktop.status_flags}, "
          f"ring underruns {desktop.ring.underruns}")
    reply = "".join(e["delta"] for e in printer.events if e["type"] == "response.output_audio_transcript.delta")
    assert "paris" in reply.lower(), f"the engine's reply was not the answer: {reply!r}"
    assert any("paris" in h.lower() for h in heard), f"the speaker did not say the answer: heard {heard!r}"
    # Half duplex: the assistant's voice came back loud and was held back, so it neither started a new turn
    # nor interrupted the reply.
    assert gate.suppressed_loud > 10
    assert kinds.count("input_audio_buffer.speech_started") == 1
    assert done and done[0]["response"]["status"] == "completed"
    assert metrics and metrics[0]["end_of_speech_to_first_audio_ms"] > 0
