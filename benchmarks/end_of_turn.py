"""Could the embedded LM tell a finished question from a pause mid-sentence? (data for a semantic end of turn)

At a pause the embedded engine prefills the user's words (prepare_turn) and, on the way, reads the LM's
probability that the message ends right there (<|im_end|>, "?" or "." next: omni.model.lm.end_of_turn, computed by
ChatSession.prefill_turn(score_end=True), the same call the engine makes, after the default system prompt).
This measures it for the spoken test questions (complete) and every proper prefix of them (incomplete), and
how many of each a threshold would call finished; and the cost of scoring (prefill with and without it).
Prints numbers; the thresholds of `omni serve --semantic-eot` and of `semantic_vad`'s eagerness
(omni.streaming.vad.EAGERNESS) were chosen from them.

    .venv/bin/python benchmarks/end_of_turn.py [--heldout]

`--heldout` also measures the sentences of benchmarks/heldout_speech.py (both parts, 50 sentences no test
uses) and, per threshold, what a semantic end of turn would do at a pause (`--pause-ms` 200 of the default
`--silence-ms` 500): the precision of early ends (complete messages among all called finished, counting
every prefix as one pause, which overstates how often people pause mid-sentence) and the latency saved per
finished question (300 ms for each one called finished).

    .venv/bin/python benchmarks/end_of_turn.py --serve [TURNS]

`--serve` (default 8 turns) measures what it does through the runtime instead: the embedded engine served as
`omni serve` serves it (the WebSocket API on 127.0.0.1, the official SDK as client), spoken test questions
(espeak-ng) appended in real time in 100 ms pieces, then 1 s of silence, on two connections taking turns: one
with `semantic_vad` (eagerness medium), one with `server_vad` (the silence only). Prints per turn and as medians
the server's own figures (omni.metrics): the engine's probability that the turn was finished (ended at the pause
when >= 0.5 and known before the silence was over), end of speech -> turn end (the silence the detector waited,
media time) and -> first audio; the difference is what the semantic end of turn saves. Numbers follow the load.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.heldout_speech import FRESH_SENTENCES, SENTENCES
from benchmarks.spoken import HELD_OUT, IN_DOMAIN
from omni.model.lm.chat_session import ChatSession
from omni.model.lm.decoder import default_cache_config
from omni.model.loaders import load_lm
from omni.streaming.engines.embedded import DEFAULT_SYSTEM_PROMPT, as_sentence


def main() -> int:
    torch.set_num_threads(1)  # as `omni serve` runs the embedded engine (omni.app.serve.ENGINE_THREADS)
    lm = load_lm()
    chat = ChatSession(lm, system_prompt=DEFAULT_SYSTEM_PROMPT, cache=default_cache_config(lm.model.cfg))
    chat.prefill_history()
    seconds = {True: 0.0, False: 0.0}

    def p_end(words: str) -> float:
        """What the embedded engine computes at a pause after `words` (EmbeddedSession.prepare_turn)."""
        for score in (False, True):  # timed both ways: scoring applies the LM head to one more position
            t0 = time.perf_counter()
            chat.prefill_turn(as_sentence(words), score_end=score)
            seconds[score] += time.perf_counter() - t0
            chat.drop_prefilled_turn()
        assert chat.end_probability is not None
        return chat.end_probability

    sets = [("test questions", (*IN_DOMAIN, *HELD_OUT))]
    if "--heldout" in sys.argv[1:]:
        sets.append(("held-out sentences", (*SENTENCES, *FRESH_SENTENCES)))
    for name, texts in sets:
        questions = sorted({q.lower().strip("?.!") for q in texts})
        complete = np.array([p_end(q) for q in questions])
        prefixes = [" ".join(q.split()[:k]) for q in questions for k in range(1, len(q.split()))]
        incomplete = np.array([p_end(p) for p in prefixes])
        n = len(questions) + len(prefixes)
        print(f"{name}: {len(questions)} complete, {len(prefixes)} prefixes of them; prefill of the turn at a pause "
              f"{1000 * seconds[False] / n:.1f} ms, with the end scored {1000 * seconds[True] / n:.1f} ms")
        seconds[False] = seconds[True] = 0.0
        for threshold in (0.1, 0.2, 0.3, 0.5, 0.7):
            early, wrong = int(np.sum(complete >= threshold)), int(np.sum(incomplete >= threshold))
            print(
                f"threshold {threshold}: called finished: {np.mean(complete >= threshold):.0%} of complete, "
                f"{np.mean(incomplete >= threshold):.1%} of prefixes; precision of early ends "
                f"{early / max(1, early + wrong):.2f}, saved {300 * np.mean(complete >= threshold):.0f} ms/question",
            )
        for threshold in (0.01, 0.02, 0.05):
            print(
                f"p < {threshold} (clearly unfinished): {np.mean(incomplete < threshold):.0%} of prefixes, "
                f"{np.mean(complete < threshold):.0%} of complete"
            )
        worst = sorted(zip(incomplete, prefixes, strict=True))[-5:]
        print("prefixes most likely called finished:", ", ".join(f"{p!r} {v:.2f}" for v, p in reversed(worst)))
        least = sorted(zip(complete, questions, strict=True))[:5]
        print("questions least likely called finished:", ", ".join(f"{q!r} {v:.2f}" for v, q in least))
    return 0


async def serve_latency(turns: int) -> int:
    import statistics

    from aiohttp import web

    from benchmarks.spoken import VOICES, spoken
    from benchmarks.ws_client import WsRealtimeClient
    from omni.app.realtime_server import ServeOptions
    from omni.app.serve import make_engine
    from omni.app.server_app import build_app
    from omni.model.pcm import to_int16
    from omni.streaming.vad import TurnConfig

    app = build_app(make_engine("embedded", 0.0), ServeOptions(turn=TurnConfig()))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    modes = {"semantic_vad": {"type": "semantic_vad", "eagerness": "medium"}, "server_vad": {"type": "server_vad"}}
    clients = {}
    for mode, td in modes.items():
        clients[mode] = c = WsRealtimeClient(url)
        await c.connect()
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": td}}}})
        updated = await c.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == mode, updated
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    questions = (*IN_DOMAIN, *HELD_OUT)
    try:
        for i in range(turns):
            text = questions[i % len(questions)]
            pcm = to_int16(spoken(text, VOICES[i % len(VOICES)], rate=24000))
            pcm = np.concatenate([pcm, np.zeros(24000, np.int16)])
            for mode in (modes if i % 2 == 0 else reversed(list(modes))):  # each mode first on every other turn
                c = clients[mode]
                n = len(c.events)
                await c.append(pcm, pace=0.1)
                x = await c.wait_for("omni.metrics", start=n, limit=120)
                await c.wait_for("response.done", start=n, limit=120)
                wait, first = x["end_of_speech_to_turn_end_ms"], x["end_of_speech_to_first_audio_ms"]
                heard = next((e["transcript"] for e in c.events[n:]
                              if e["type"] == "conversation.item.input_audio_transcription.completed"), "")
                print(f"{mode:12s} {text!r} heard {heard!r}: end of speech -> turn end {wait} ms (p finished "
                      f"{x['turn_end_probability']}, ended at the pause {x['semantic_end_of_turn']}), -> first audio "
                      f"{first} ms", flush=True)
                if wait is not None and first is not None:
                    results[mode].append((wait, first))
    finally:
        for c in clients.values():
            await c.close()
        await runner.cleanup()
    for mode, r in results.items():
        if r:
            print(f"{mode}: median over {len(r)} turns: end of speech -> turn end "
                  f"{statistics.median(w for w, _ in r):.0f} ms, -> first audio "
                  f"{statistics.median(f for _, f in r):.0f} ms (p95 {np.percentile([f for _, f in r], 95):.0f} ms)")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        import asyncio

        rest = sys.argv[sys.argv.index("--serve") + 1 :]
        raise SystemExit(asyncio.run(serve_latency(int(rest[0]) if rest else 8)))
    raise SystemExit(main())
