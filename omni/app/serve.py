"""`omni serve`: starts the real-time server (omni.app.realtime_server) on an engine and prints its URL.

Heavy imports (aiohttp, aiortc, the engine) happen in `run`, so `omni --help` and the other subcommands
stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from omni.app import deploy_args
from omni.streaming.vad import EAGERNESS, TurnConfig

log = logging.getLogger("omni.serve")

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from omni.streaming.engine import Engine
    from omni.streaming.memory_lane import MemoryHub
    from omni.streaming.memory_summary import WorkerSummarizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=deploy_args.port_number, default=8080,
                   help="TCP port to listen on, 0-65535 (0: any free one; default %(default)s)")
    p.add_argument(
        "--engine",
        choices=("embedded", "omni", "tiny", "test"),
        default="embedded",
        help="embedded: the packaged CPU speech engine (default); omni: the Omni model from --model (Qwen2.5-Omni "
        "or Qwen3-Omni Thinker-Talker, the family detected from its config.json); "
        "tiny: a tiny random-weight decoder LM (real model path, gibberish replies spoken as tones); test: a tone "
        "engine, no model",
    )
    p.add_argument("--model", metavar="DIR", help="omni engine: a Qwen2.5-Omni checkpoint directory (with spk_dict.pt) "
                   "or a Qwen3-Omni one")
    from omni.model.embedded.voices import DEFAULT_VOICE, VOICES

    p.add_argument(
        "--voice", metavar="NAME",
        help=f"the default voice; embedded engine: one of {', '.join(VOICES)} (default {DEFAULT_VOICE}: "
        + "; ".join(f"{k}: {v.description}" for k, v in VOICES.items()) + "); omni engine: a checkpoint voice "
        "(Qwen2.5: e.g. Chelsie, Ethan; Qwen3: a speaker, e.g. ethan, chelsie, aiden)",
    )
    p.add_argument(
        "--llm", metavar="FILE_OR_DIR",
        help="embedded engine: the language model instead of the packaged SmolLM2-135M-Instruct, a .gguf file or "
        "a Hugging Face decoder directory (Llama, Qwen2, ... with its tokenizer); same ears and voice",
    )
    p.add_argument("--device", default="cpu", help="omni engine: torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--quant", choices=["int8", "int4"], default=None,
                   help="omni engine: weight-only int8/int4 Thinker and Talker projections at load (GPU kernels)")
    p.add_argument("--batch-sessions", type=int, default=0, metavar="N",
                   help="omni engine (Qwen2.5-Omni or Qwen3-Omni): the first N open sessions' Thinker and Talker "
                   "(Qwen3: and code predictor) decode steps run batched on the device, their caches in pools "
                   "allocated at start (default 0: each session runs alone); on CUDA each pool's decode step is "
                   "captured as CUDA graphs at start-up, one per batch size, the capture time logged and in /metrics "
                   "(environment OMNI_CUDA_GRAPHS=0: run the steps eagerly)")
    p.add_argument("--compile-token2wav", action=argparse.BooleanOptionalAction, default=None,
                   help="omni engine (Qwen2.5-Omni): the streaming token2wav's DiT and BigVGAN through torch.compile, "
                   "compiled at start-up (needs a C++ compiler; minutes on a CPU, for chunks 14-25%% faster there; "
                   "unmeasured on a GPU); default: the environment's OMNI_TOKEN2WAV_COMPILE=1, else off")
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server URL for ICE (repeatable; default none)",
    )
    p.add_argument(
        "--ice-host",
        action="append",
        default=[],
        metavar="ADDR",
        help="offer only these host candidate addresses (repeatable; e.g. 127.0.0.1 for loopback)",
    )
    from omni.app.realtime_server import IDLE_TIMEOUT  # (aiortc: imported only when the serve parser is built)

    p.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connected call whose microphone sends no RTP packets for this long (a vanished client; "
        "silence and muted tracks still send packets); 0 disables (default %(default)s)",
    )
    _add_turn_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--test-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    deploy_args.add_arguments(p)
    p.set_defaults(run=run)



def _add_turn_arguments(p: argparse.ArgumentParser) -> None:
    turn = TurnConfig()  # the turn flags' defaults are TurnConfig's own
    p.add_argument("--silence-ms", type=int, default=turn.silence_ms, help="silence that ends a turn "
                   "(default %(default)s)")
    p.add_argument("--pause-ms", type=int, default=turn.pause_ms,
                   help="a pause this long inside a turn lets the engine finish recognising and prefill it while "
                        "the rest of --silence-ms is awaited (0: off; default %(default)s)")
    p.add_argument("--min-speech-ms", type=int, default=turn.min_speech_ms,
                   help="shorter sounds (clicks, coughs) are not speech (default %(default)s)")
    p.add_argument("--vad-threshold", type=float, default=turn.threshold,
                   help="speech probability (Silero VAD, 0-1) above which a microphone frame counts as speech "
                        "(default %(default)s)")
    p.add_argument("--semantic-eot", type=float, default=turn.semantic_eot, metavar="THRESHOLD",
                   help="semantic end of turn: at the --pause-ms pause, an engine that can tell (embedded) judges "
                        "whether the user's words are a finished message; at this probability or above the turn "
                        "ends there instead of after --silence-ms (0: off, every turn waits the silence; a "
                        "client's session.update chooses per session: semantic_vad's eagerness "
                        + ", ".join(f"{k} {v:g}" for k, v in EAGERNESS.items() if k != "auto")
                        + ", or server_vad, off; default %(default)s)")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """--memory-dir / --memory-url / --no-memory / --memory-persist-anonymous (omni.streaming.memory_lane; users from
    `user_id` on the call)."""
    from omni.memory.store import default_memory_dir

    g = p.add_argument_group("memory", "what the assistant remembers per user (`user_id` query parameter of "
                             "/v1/realtime/calls or session.update `omni.user_id`; anonymous calls: session only)")
    g.add_argument("--memory-dir", metavar="DIR", default=None,
                   help=f"SQLite store and feature shards (default {default_memory_dir()})")
    g.add_argument("--memory-url", metavar="URL", default=None, help="a postgresql:// URL instead of --memory-dir")
    g.add_argument("--no-memory", action="store_true", help="remember nothing beyond the KV window")
    g.add_argument("--memory-persist-anonymous", action="store_true",
                   help="keep the memory of anonymous calls (no user id) in the store after they end, each under "
                        "its own user anon:SESSION_ID (for `omni memory list|show|export|forget`; no later call "
                        "recalls it); default: an anonymous call's memory lasts the call and is forgotten at its end")


def open_memory(args: argparse.Namespace, engine: Engine | None = None) -> MemoryHub | None:
    """The process's memory for engines that use it (embedded, omni), None with --no-memory or for the others.
    L2 summaries are written by the engine's own LM (the embedded LM; the omni engine's Thinker, either family) every
    10 events or 5 minutes of stream, as low-priority steps on the device worker (omni.streaming.memory_summary); other
    engines' memory has no L2. The omni engine's memory also keys text items in the Thinker's input space."""
    if args.no_memory and (args.memory_dir or args.memory_url or args.memory_persist_anonymous):
        raise ValueError("--no-memory cannot go with --memory-dir, --memory-url or --memory-persist-anonymous")
    if args.memory_dir and args.memory_url:
        raise ValueError("give --memory-dir or --memory-url, not both")
    if args.no_memory or args.engine not in ("embedded", "omni"):
        return None
    from omni.memory import Memory, MemoryConfig, MemoryStore, default_memory_dir
    from omni.memory.store import store_errors
    from omni.model.embedded.text_embedding import TextEmbedder
    from omni.streaming.memory_lane import MemoryHub

    location = args.memory_url or str(args.memory_dir or default_memory_dir())
    try:
        store = MemoryStore.open(location)
    except store_errors() as e:  # unwritable, full, or a database that is down: memory while the server runs
        # (a malformed --memory-url or another schema version is not caught: `run` reports it and exits 1)
        fallback = tempfile.mkdtemp(prefix="omni-memory-")
        atexit.register(shutil.rmtree, fallback, True)
        where = "--memory-url" if args.memory_url else location  # a URL is not shown: it may hold a password
        log.warning("cannot open the memory store %s (%s: %s): memory lasts only while this server runs (%s)",
                    where, type(e).__name__, e, fallback)
        store = MemoryStore.open(fallback)
    embed = TextEmbedder()
    summarizer = lm_summarizer(engine) if engine is not None else None
    spaces = text_spaces(engine) if engine is not None else {}
    config = MemoryConfig(persist_anonymous=args.memory_persist_anonymous)
    return MemoryHub(Memory(store, embed=embed, config=config, summarize=summarizer, text_spaces=spaces), embed,
                     summarizer=summarizer)


def lm_summarizer(engine: Engine) -> WorkerSummarizer | None:
    """The engine's own LM as the memory's summarizer: the embedded engine's LM, or the omni engine's Thinker
    (either family, text-only generation; None for others)."""
    from omni.streaming.memory_summary import WorkerSummarizer

    if engine.name == "omni":  # (each engine module is imported only where it already is)
        from omni.model.lm.summary import thinker_summary_steps
        from omni.streaming.engines.omni import OmniEngine

        assert isinstance(engine, OmniEngine)
        thinker = engine.thinker
        return WorkerSummarizer(lambda texts: thinker_summary_steps(thinker, texts))
    if engine.name != "embedded":
        return None
    from omni.streaming.engines.embedded import EmbeddedEngine

    assert isinstance(engine, EmbeddedEngine)
    from omni.model.lm.summary import summary_steps

    lm = engine.lm
    return WorkerSummarizer(lambda texts: summary_steps(lm, texts))


def text_spaces(engine: Engine) -> dict[str, Callable[[Sequence[str]], np.ndarray]]:
    """The memory's extra text key spaces: the omni engine's Thinker input space
    (omni.streaming.engines.omni_memory), so a spoken question reaches typed facts and summaries; none for other
    engines."""
    if engine.name != "omni":
        return {}
    from omni.streaming.engines.omni import OmniEngine
    from omni.streaming.engines.omni_memory import THINKER_SPACE, ThinkerTextKeys

    assert isinstance(engine, OmniEngine)
    return {THINKER_SPACE: ThinkerTextKeys(engine.thinker)}


def make_engine(
    name: str, step_delay: float = 0.0, model: str | None = None, voice: str | None = None, device: str = "cpu",
    llm: str | None = None,
    quant: str | None = None,
    batch_sessions: int = 0,
    compile_token2wav: bool | None = None,
) -> Engine:
    if name != "omni" and (model is not None or quant is not None):
        raise ValueError(f"--model and --quant are for --engine omni, not {name}")
    if name != "omni" and batch_sessions:
        raise ValueError(f"--batch-sessions is for --engine omni, not {name}")
    if name != "omni" and compile_token2wav:
        raise ValueError(f"--compile-token2wav is for --engine omni, not {name}")
    if name not in ("omni", "embedded") and voice is not None:
        raise ValueError(f"--voice is for --engine embedded or omni, not {name}")
    if name != "embedded" and llm is not None:
        raise ValueError(f"--llm is for --engine embedded, not {name} (--engine omni takes --model)")
    if name == "omni":
        if model is None:
            raise ValueError("--engine omni needs --model DIR (a Qwen2.5-Omni or Qwen3-Omni checkpoint directory)")
        from omni.streaming.engines.omni import OmniEngine

        return OmniEngine(model, device=device, voice=voice, quant=quant, max_sessions=batch_sessions,
                          compile_token2wav=compile_token2wav)
    if name == "test":
        from omni.streaming.engines.tone import ToneEngine

        return ToneEngine(step_delay=step_delay)
    if name == "tiny":
        from omni.streaming.engines.tiny import TinyLMEngine

        return TinyLMEngine(step_delay=step_delay)
    try:
        from omni.streaming.engines.embedded import EmbeddedEngine
    except ImportError as e:
        raise RuntimeError(f"the embedded engine is not available ({e}); run with --engine test") from e
    from omni.model.embedded.voices import DEFAULT_VOICE

    engine: Engine = EmbeddedEngine(model=llm, voice=voice or DEFAULT_VOICE)
    return engine


# Torch's intra-op threads per engine (process-wide, so set here and nowhere else); None leaves torch's default.
# embedded: on 2 cores shared with the recogniser, the VAD and the server, two OpenMP threads stall on each
# other whenever a core is taken. SmolLM2 decode on the C kernels, 2-core machine (64 tokens, best of 3): idle,
# 1 thread 65-73 tok/s, 2 threads 102-128 tok/s; with one core kept busy by another process, 1 thread 76 tok/s,
# 2 threads 34 tok/s. One thread is several times faster than speech is played, so the second core is better
# left to the rest. tiny: at its shapes (d 64) a parallel region only costs its fork and join, which on 2 busy
# shared cores took 40-70 ms per token against 2 ms on one thread.
ENGINE_THREADS: dict[str, int | None] = {"embedded": 1, "tiny": 1, "omni": None, "test": None}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        turn = TurnConfig(
            threshold=args.vad_threshold, silence_ms=args.silence_ms, min_speech_ms=args.min_speech_ms,
            pause_ms=args.pause_ms, semantic_eot=args.semantic_eot,
        ).validate()
        if args.idle_timeout < 0:
            raise ValueError(f"--idle-timeout must be >= 0 seconds, got {args.idle_timeout:g}")
        auth, limits = deploy_args.deploy_settings(args)
        if args.engine == "omni":
            from omni.app.lm_args import check_device

            check_device(args.device)
        print(f"omni serve: loading the {args.engine} engine ...", file=sys.stderr, flush=True)
        threads = ENGINE_THREADS[args.engine]
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        engine = make_engine(
            args.engine, args.test_step_delay, args.model, args.voice, args.device, args.llm, args.quant,
            args.batch_sessions, args.compile_token2wav,
        )
        memory = open_memory(args, engine)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"omni serve: error: {e}", file=sys.stderr)
        return 1
    from omni.app.limits import RateLimitedLog
    from omni.app.realtime_server import ServeOptions
    from omni.app.server_app import build_app
    from omni.app.shutdown import serve
    from omni.app.signaling import restrict_ice_hosts

    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimitedLog())

    if args.ice_host:
        restrict_ice_hosts(args.ice_host)
    options = ServeOptions(
        ice_servers=args.ice_server, turn=turn, idle_timeout=args.idle_timeout, limits=limits, auth=auth,
        memory=memory,
    )
    try:
        asyncio.run(serve(build_app(engine, options), args.host, args.port, args.drain_seconds, limits.request_timeout))
    except OSError as e:
        print(f"omni serve: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0

