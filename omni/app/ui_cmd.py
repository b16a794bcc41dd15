"""`omni ui`: the Gradio voice page (omni/app/gradio_page.py), on an in-process omni server or a given one."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse

from omni.app.deploy_args import API_KEY_ENV, port_number


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address the page binds (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=7860, help="the page's port (default 7860)")
    p.add_argument("--server", metavar="URL",
                   help="an `omni serve` to talk to (e.g. http://gpu-box:8080); default: start one in this process")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"the omni server's key (its --api-key): the page's server sends it for the browser, which "
                   f"never sees it; in-process, the server then requires it. Default: ${API_KEY_ENV}; without one, "
                   "a server that has keys makes the page ask for one")
    p.add_argument("--engine", choices=("embedded", "omni", "tiny", "test"), default="embedded",
                   help="the in-process server's engine (as `omni serve --engine`; default embedded)")
    p.add_argument("--model", metavar="DIR", help="omni engine: a Qwen2.5-Omni or Qwen3-Omni checkpoint directory")
    p.add_argument("--device", default="cpu", help="omni engine: torch device (default cpu)")
    p.add_argument("--ice-host", action="append", default=[], metavar="ADDR",
                   help="in-process server: offer only these ICE host addresses (e.g. 127.0.0.1 for loopback)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from omni.app.gradio_page import UiServer
    except ImportError as e:
        print(f"omni ui: error: {e}; install the ui extra (pip install -e '.[serve,ui]')", file=sys.stderr)
        return 1
    background = None
    server_url = args.server
    if server_url is not None:
        parts = urllib.parse.urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:  # (was: a page whose every call failed)
            print(f"omni ui: error: --server must be an http:// or https:// URL of an omni server, got {server_url!r}",
                  file=sys.stderr)
            return 2
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if server_url is None:
        from omni.app.auth import DEFAULT_USER, AuthConfig
        from omni.app.background_server import BackgroundServer
        from omni.app.realtime_server import ServeOptions
        from omni.app.serve import ENGINE_THREADS, make_engine
        from omni.app.signaling import restrict_ice_hosts

        print(f"omni ui: loading the {args.engine} engine ...", file=sys.stderr, flush=True)
        try:
            threads = ENGINE_THREADS[args.engine]
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            if args.engine == "omni":
                from omni.app.lm_args import check_device

                check_device(args.device)  # (was: torch's traceback mid-load)
            engine = make_engine(args.engine, model=args.model, device=args.device)
        except (ValueError, RuntimeError) as e:
            print(f"omni ui: error: {e}", file=sys.stderr)
            return 1
        if args.ice_host:
            restrict_ice_hosts(args.ice_host)
        auth = AuthConfig(keys={api_key: DEFAULT_USER} if api_key else {})
        background = BackgroundServer(engine, ServeOptions(auth=auth))
        server_url = background.start()
    try:
        page = UiServer(server_url, args.host, args.port, api_key)
    except OSError as e:
        print(f"omni ui: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    try:
        print(f"omni ui: open {page.url}/ (omni server {server_url}; Ctrl-C stops)", flush=True)
        page.serve_forever()
    finally:
        if background is not None:
            background.stop()
    return 0
