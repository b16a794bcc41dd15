"""`omni chat`: a terminal chat that streams the reply token by token.

Interactive on a terminal (multi-turn, /reset, /quit, tokens/s after each reply on stderr). With standard
input not a terminal it answers each non-empty input line and prints only the replies, one per line, so
other programs can use it: `echo "What is the capital of France?" | omni chat`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from app.lm_args import add_model_arguments, dtype_of

if TYPE_CHECKING:
    from model.generate import ChatSession


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--window", type=int, default=4096, help="attention window of the KV cache, in tokens")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from model.decoder import default_cache_config
    from model.generate import ChatSession
    from model.loaders import CheckpointError, load_lm
    from model.sampling import SamplingConfig

    if args.prompt is not None and not args.prompt.strip():
        print("omni chat: error: --prompt is empty: nothing to answer", file=sys.stderr)
        return 2
    try:
        sampling = SamplingConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens, seed=args.seed,
        )
        interactive = args.prompt is None and sys.stdin.isatty()
        if interactive:
            print("loading model ...", file=sys.stderr, flush=True)
        lm = load_lm(args.model, dtype=dtype_of(args), device=args.device)
    except (CheckpointError, ValueError) as e:
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 1
    if interactive:
        print(f"loaded {lm.source} in {lm.load_seconds:.1f} s. /reset starts over, /quit or Ctrl-D ends.",
              file=sys.stderr)
    session = ChatSession(lm, system_prompt=args.system, sampling=sampling,
                          cache=default_cache_config(lm.model.cfg, window=args.window))
    if args.prompt is not None:
        return _answer(session, args.prompt, sys.stdout, stats=False)
    if interactive:
        return _interactive(session)
    answered = 0
    for line in sys.stdin:
        if line.strip():
            _answer(session, line.strip(), sys.stdout, stats=False)
            answered += 1
    if answered == 0:
        print("omni chat: error: no input lines: nothing to answer", file=sys.stderr)
        return 1
    return 0


def _answer(session: ChatSession, text: str, out: TextIO, stats: bool) -> int:
    for delta in session.stream_reply(text):
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    if stats:
        s = session.last
        print(f"[{s.prompt_tokens} prompt tokens at {s.prefill_tokens_per_second:.0f} tok/s, "
              f"{s.new_tokens} new at {s.decode_tokens_per_second:.1f} tok/s]", file=sys.stderr)
    return 0


def _interactive(session: ChatSession) -> int:
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        sys.stdout.write("omni> ")
        try:
            _answer(session, text, sys.stdout, stats=True)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
