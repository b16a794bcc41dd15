"""Where the time goes between the end of the user's speech and the first reply audio, through `omni serve`
over loopback WebRTC with the embedded engine: per turn, a timestamp per stage. Prints numbers, asserts nothing.

    .venv/bin/python -m benchmarks.serve_stages [--turns 10] [--semantic-eot 0] [--pause-ms 200]
        [--silence-ms 500] [--question "Hello there, can you hear me?"]

Each turn: the client says the question (espeak-ng, real time over the microphone track), waits for the reply
to finish playing, then 1 s of quiet. The server's own figures (omni.metrics) are joined with timestamps taken
by wrapping the engine's and the runtime's methods in this process (monkeypatched here only; the product runs
unchanged), all in ms after the end of speech as the server's VAD saw it (`end_of_speech`: the end of the last
voiced chunk, on the session's media clock):

  paused      the detector's SpeechPaused was handled (pause_ms of silence)
  prep_start / prep_end   the engine's prepare_turn ran (whisper: its final pass; prefill: the user message)
  stopped     the detector's SpeechStopped was handled (silence_ms, or the pause with a semantic end)
  respond     the reply's first worker job started (engine.respond)
  tok1        the LM's first reply token
  phrase1     the first phrase's text was complete (synthesis starts)
  synth       Piper's synthesis of the first phrase (duration) and its words
  audio_out   the first audio chunk left the engine (metrics' compute side)
  first_audio the first audio was read by the transport's 20 ms track (omni.metrics; the goal's figure)
  client      the first loud frame arrived at the client (after RTP, Opus and aiortc's jitter buffer)
  client_eos  the client's own end of speech (last loud frame sent) -> first loud frame received

Each row also says whether the prepared turn was reused (`reuse`: stream_reply found the prefilled turn) and the
turn's semantic end probability. The last lines are medians and p95 per column, peak RSS and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from benchmarks.rtc_client import RealtimeClient
from benchmarks.serve_loopback import make_speech
from omni.app.realtime_server import ServeOptions
from omni.app.serve import make_engine
from omni.app.server_app import build_app
from omni.app.signaling import restrict_ice_hosts
from omni.model.embedded.whisper import WhisperModel, WhisperRecognizer
from omni.model.lm.chat_session import ChatSession
from omni.streaming import session as session_mod
from omni.streaming.engines.embedded import EmbeddedSession
from omni.streaming.frames import SpeechPaused, SpeechStopped
from omni.streaming.vad import TurnConfig

Marks = list[tuple[str, float, Any]]  # (stage, time.monotonic(), detail)
MARKS: Marks = []


def _mark(name: str, detail: Any = None) -> None:
    MARKS.append((name, time.monotonic(), detail))


def _timed(cls: type, attr: str, name: str) -> None:
    """Wrap `cls.attr` so each call marks `name` with (start, duration)."""
    orig = getattr(cls, attr)

    @functools.wraps(orig)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.monotonic()
        try:
            return orig(*a, **k)
        finally:
            MARKS.append((name, t0, time.monotonic() - t0))

    setattr(cls, attr, wrapper)


def instrument() -> None:
    """Monkeypatch the stages to mark their times (this process only)."""
    _timed(EmbeddedSession, "prepare_turn", "prepare")
    _timed(EmbeddedSession, "push_audio", "push")
    _timed(EmbeddedSession, "end_turn", "end_turn")
    _timed(WhisperRecognizer, "finish", "whisper")
    transcribe = WhisperModel.transcribe

    def _transcribe(self: WhisperModel, pcm: np.ndarray, *a: Any, **k: Any) -> str:
        t0 = time.monotonic()
        text = transcribe(self, pcm, *a, **k)
        rescore = a[0] if a else k.get("rescore", True)  # False: a live caption
        MARKS.append(("caption" if not rescore else "final", t0, (time.monotonic() - t0, text)))
        return text

    WhisperModel.transcribe = _transcribe  # type: ignore[method-assign]
    scored = ChatSession.prefill_turn

    def prefill_turn(self: ChatSession, user_text: str, context: str = "", score_end: bool = False) -> int:
        n = scored(self, user_text, context, score_end)
        _mark("p_end", (user_text, self.end_probability))
        return n

    ChatSession.prefill_turn = prefill_turn  # type: ignore[method-assign]
    _timed(ChatSession, "prefill_turn", "prefill")

    speak = EmbeddedSession._speak

    def _speak(self: EmbeddedSession, phrase: str, turn: Any, *, final: bool) -> Iterator[Any]:
        t0 = time.monotonic()
        for chunk in speak(self, phrase, turn, final=final):
            MARKS.append(("speak", t0, (time.monotonic() - t0, len(phrase.split()), len(chunk.pcm))))
            yield chunk

    EmbeddedSession._speak = _speak  # type: ignore[method-assign]

    stream = ChatSession.stream_reply

    def stream_reply(self: ChatSession, user_text: str, context: str = "") -> Iterator[str]:
        reuse = self._before_turn is not None
        _mark("respond", reuse)
        first = True
        for delta in stream(self, user_text, context):
            if first and delta:
                _mark("tok1")
                first = False
            yield delta

    ChatSession.stream_reply = stream_reply  # type: ignore[method-assign]

    handle = session_mod.Session._handle_stage_output

    async def _handle(self: Any, out: list[Any]) -> None:
        for ev in out:
            if isinstance(ev, SpeechPaused):
                _mark("paused", self._t0 + ev.timestamp)
            elif isinstance(ev, SpeechStopped):
                _mark("stopped", self._t0 + ev.timestamp)
        await handle(self, out)

    session_mod.Session._handle_stage_output = _handle  # type: ignore[method-assign]


COLUMNS = ("paused", "prep_start", "whisper", "prefill", "prep_end", "stopped", "respond", "tok1", "phrase1",
           "synth", "audio_out", "first_audio", "client", "client_eos")


def turn_row(marks: Marks, eos: float, next_eos: float, m: dict[str, Any],
             client: RealtimeClient, said_at: float) -> dict[str, Any]:
    """The stages of the turn whose server-side end of speech is `eos` (monotonic), in ms after it."""
    mine = [(n, t, d) for n, t, d in marks if eos - 1.5 <= t < next_eos]

    def first(name: str, after: float = eos - 1.5) -> tuple[float, Any] | None:
        return next(((t, d) for n, t, d in mine if n == name and t >= after), None)

    ms = lambda t: round((t - eos) * 1000.0)  # noqa: E731
    row: dict[str, Any] = {}
    paused = first("paused")
    if paused:
        row["paused"] = ms(paused[0])
    prep = [(t, d) for n, t, d in mine if n == "prepare"]
    if prep:
        t, d = prep[-1]  # the last preparation before the end is the one that counts
        row["prep_start"], row["prep_end"] = ms(t), ms(t + d)
        w = [d2 for n, t2, d2 in mine if n == "whisper" and t <= t2 <= t + d]
        p = [d2 for n, t2, d2 in mine if n == "prefill" and t <= t2 <= t + d]
        row["whisper"] = round(w[-1] * 1000) if w else None
        row["prefill"] = round(p[-1] * 1000) if p else None
        row["n_prep"] = len(prep)
    stopped = first("stopped", eos - 0.1)
    if stopped:
        row["stopped"] = ms(stopped[0])
    r = first("respond", eos - 0.1)
    if r:
        row["respond"], row["reuse"] = ms(r[0]), r[1]
        tok = first("tok1", r[0])
        if tok:
            row["tok1"] = ms(tok[0])
        sp = first("speak", r[0])
        if sp:
            row["phrase1"] = ms(sp[0])
            row["synth"] = round(sp[1][0] * 1000)
            row["words1"] = sp[1][1]
            row["audio_out"] = ms(sp[0] + sp[1][0])
    pushes = [(t, d) for n, t, d in mine if n == "push" and t >= eos - 1.0 and d > 0.03]
    row["pushes"] = [f"{ms(t)}+{round(d * 1000)}" for t, d in pushes]  # push_audio jobs over 30 ms
    caps = [(t, d) for n, t, d in mine if n == "caption" and t >= eos - 1.0]
    row["captions"] = [f"{ms(t)}+{round(d[0] * 1000)}" for t, d in caps]  # start+duration of caption passes
    row["pauses"] = [f"{d[0]!r}:{d[1]:.2f}" for n, _, d in mine if n == "p_end" and d[1] is not None]
    row["first_audio"] = m["end_of_speech_to_first_audio_ms"]
    loud = next((t for t, rms in client.audio if t >= eos and rms > 0.01), None)
    if loud is not None:
        row["client"] = ms(loud)
        spoke = [t for t, rms in client.mic.sent if said_at <= t <= loud and rms > 0.01]
        if spoke:
            row["client_eos"] = round((loud - spoke[-1]) * 1000)
    row["p_end"] = m.get("turn_end_probability")
    row["semantic"] = m.get("semantic_end_of_turn")
    return row


async def run(args: argparse.Namespace, speech: np.ndarray) -> None:
    instrument()
    engine = make_engine("embedded")
    restrict_ice_hosts(["127.0.0.1"])
    turn = TurnConfig(silence_ms=args.silence_ms, pause_ms=args.pause_ms, semantic_eot=args.semantic_eot)
    app = build_app(engine, ServeOptions(turn=turn))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = RealtimeClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
    await client.connect()
    rows = []
    try:
        for _ in range(args.turns):
            n = len(client.events)
            said_at = time.monotonic()
            client.mic.say(speech)
            m = await client.wait_for("omni.metrics", start=n, limit=120)
            await client.wait_for("output_audio_buffer.stopped", start=n, limit=120)
            await asyncio.sleep(1.0)
            eos = [d for name, _, d in MARKS if name == "stopped"][-1]  # the end of speech the VAD saw
            row = turn_row(MARKS, eos, time.monotonic(), m, client, said_at)
            kinds = [e["type"] for e in client.events[n:]]  # one question, one turn: more is a turn split
            row["turns"] = kinds.count("input_audio_buffer.speech_stopped")
            row["replies"] = kinds.count("response.created")
            rows.append(row)
            print("turn", m["turn"], " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        await client.close()
        await runner.cleanup()
    print(f"stages, ms after the end of speech (median / p95 over {len(rows)} turns; semantic_eot "
          f"{args.semantic_eot}, pause {args.pause_ms} ms, silence {args.silence_ms} ms):")
    for col in COLUMNS:
        xs = [r[col] for r in rows if r.get(col) is not None]
        if xs:
            print(f"  {col:12s} {statistics.median(xs):7.0f} {np.percentile(xs, 95):7.0f}   (n={len(xs)})")
    split = sum(1 for r in rows if r["turns"] != 1 or r["replies"] != 1)
    print(f"questions heard as more than one turn (or answered more than once): {split} of {len(rows)}")
    reuse = sum(1 for r in rows if r.get("reuse"))
    print(f"prepared turn reused in {reuse} of {len(rows)} replies; preparations per turn "
          f"{[r.get('n_prep', 0) for r in rows]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--semantic-eot", type=float, default=0.0)
    p.add_argument("--pause-ms", type=int, default=200)
    p.add_argument("--silence-ms", type=int, default=500)
    p.add_argument("--question", default=None, help="what the client says (default: serve_loopback's)")
    args = p.parse_args(argv)
    speech = make_speech() if args.question is None else _speak(args.question)
    asyncio.run(run(args, speech))


def _speak(text: str) -> np.ndarray:
    import subprocess
    import tempfile

    from benchmarks.spoken import read_wav

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "q.wav"
        subprocess.run([sys.executable, "-m", "benchmarks.spoken", "speak", text, str(wav), "48000"], check=True)
        return read_wav(wav)[0]


if __name__ == "__main__":
    main()
