"""`omni memory list|search|show|forget|export`: look at and manage what the assistant remembers.

Wire-up in omni/app/cli.py (one entry in SUBCOMMANDS):

    def _add_memory(sub: argparse._SubParsersAction) -> None:
        from omni.app import memory_cli

        memory_cli.register(sub)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from omni.memory import admin
from omni.memory.store import MemoryStore, SchemaVersionError, default_memory_dir, store_errors


def register(sub: argparse._SubParsersAction) -> None:
    summary = "list, search, show, forget or export what the assistant remembers"
    p = sub.add_parser("memory", help=summary, description=f"omni memory: {summary}, per user (the store "
                       "`omni serve` writes; `omni memory ACTION --help` for each action)")
    p.add_argument("--memory-dir", type=Path, default=None,
                   help=f"SQLite store and feature shards (default: {default_memory_dir()})")
    p.add_argument("--memory-url", default=None, help="a postgresql:// URL instead of --memory-dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of text lines")
    cmds = p.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    ls = cmds.add_parser("list", help="users with memory, or one user's items in time order")
    ls.add_argument("--user", default=None, help="this user's items (default: every user, with counts)")
    se = cmds.add_parser("search", help="a user's items closest to a text (packaged MiniLM embedding)")
    se.add_argument("--user", required=True, help="whose memory to search")
    se.add_argument("-k", type=int, default=10, help="how many items (default %(default)s)")
    se.add_argument("query", help="the text to search for")
    sh = cmds.add_parser("show", help="one item in full, e.g. L1:12, L2:3, L3:7")
    sh.add_argument("--user", required=True, help="whose item")
    sh.add_argument("item", help="the item's name as list and search print it (L1: events, L2: summaries, "
                    "L3: notes)")
    fo = cmds.add_parser("forget", help="remove every row and feature shard of a user")
    fo.add_argument("--user", required=True, help="whose memory to remove")
    fo.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ex = cmds.add_parser("export", help="write a user's memory (memory.json + features/*.npz) to a folder")
    ex.add_argument("--user", required=True, help="whose memory to export")
    ex.add_argument("--out", type=Path, required=True, help="the folder to write (made if missing)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    location = args.memory_url or str(args.memory_dir or default_memory_dir())
    if not args.memory_url and Path(location).exists() and not Path(location).is_dir():
        print(f"omni memory: --memory-dir {location}: a file, not a folder", file=sys.stderr)
        return 1
    if not args.memory_url and not Path(location).exists():  # reading commands must not leave an empty store behind
        print(f"omni memory: no memory store at {location} (nothing remembered yet; `omni serve --memory-dir` "
              "writes one)", file=sys.stderr)
        return 1
    try:
        store = MemoryStore.open(location)
    except store_errors() + (ValueError, SchemaVersionError) as e:  # the URL is not shown: it may hold a password
        where = "--memory-url" if args.memory_url else location
        print(f"omni memory: cannot open the memory store {where}: {_reason(e)}", file=sys.stderr)
        return 1
    try:
        return _dispatch(args, store)
    except (KeyError, ValueError) as e:
        print(f"omni memory: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    except store_errors() + (SchemaVersionError,) as e:  # e.g. export --out names a file, or the disk is full
        print(f"omni memory {args.memory_command}: {_reason(e)}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _dispatch(args: argparse.Namespace, store: MemoryStore) -> int:
    cmd = args.memory_command
    if cmd == "list":
        rows = admin.list_users(store) if args.user is None else admin.list_items(store, args.user)
        _print(args, rows)
    elif cmd == "search":
        if args.k < 1:
            raise ValueError(f"-k must be >= 1, got {args.k}")
        from omni.model.embedded.text_embedding import TextEmbedder

        _print(args, admin.search(store, args.user, TextEmbedder(), args.query, k=args.k))
    elif cmd == "show":
        print(json.dumps(admin.show(store, args.user, args.item), ensure_ascii=False, indent=1))
    elif cmd == "forget":
        if not args.yes:
            if not sys.stdin.isatty():
                print("omni memory forget: add --yes to confirm (no terminal to ask)", file=sys.stderr)
                return 2
            if input(f"forget everything of user {args.user!r}? [y/N] ").strip().lower() != "y":
                return 1
        print(f"removed {admin.forget(store, args.user)} rows of user {args.user!r}")
    else:
        print(admin.export(store, args.user, args.out))
    return 0


def _print(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    for r in rows:
        if "user" in r:
            print(f"{r['user']}\tevents {r['events']}\tsummaries {r['summaries']}\tnotes {r['notes']}")
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["t_start"]))
            score = f"{r['score']:.3f}\t" if "score" in r else ""
            print(f"{score}{r['item']}\t{when}\t{r['text']}")
