"""The `omni` command: one console script with subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


def _subparser(sub: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with the same summary `omni --help` lists it with."""
    return sub.add_parser(name, help=summary, description=f"omni {name}: {summary}")


def _add_chat(sub: argparse._SubParsersAction) -> None:
    from omni.app import chat

    chat.add_arguments(_subparser(sub, "chat", "terminal chat, streaming the reply token by token"))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from omni.app import bench

    bench.add_arguments(_subparser(sub, "bench", "measure load time and prefill/decode speed"))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from omni.app import serve

    serve.add_arguments(_subparser(sub, "serve", "the browser demo: WebRTC voice and camera, Realtime events"))


def _add_ui(sub: argparse._SubParsersAction) -> None:
    from omni.app import ui_cmd

    ui_cmd.add_arguments(_subparser(sub, "ui", "the Gradio voice page, on an in-process or a given omni server"))


def _add_desktop(sub: argparse._SubParsersAction) -> None:
    from omni.app import desktop

    desktop.add_arguments(_subparser(sub, "desktop", "voice (and camera) from this machine's devices, no browser"))


def _add_memory(sub: argparse._SubParsersAction) -> None:
    from omni.app import memory_cli

    memory_cli.register(sub)


# Each entry registers one subcommand; subcommand modules import their heavy dependencies lazily.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_chat, _add_bench, _add_serve, _add_ui, _add_desktop, _add_memory
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni", description="omni: a streaming, real-time assistant",
                                     epilog="`omni COMMAND --help` explains each command and its flags.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
