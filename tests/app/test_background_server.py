"""`BackgroundServer` (the in-process server of `omni ui`) gives back what the server froze at startup."""

from __future__ import annotations

import gc
import urllib.request

from omni.app.background_server import BackgroundServer
from omni.streaming.engines.tone import ToneEngine


def test_stop_unfreezes_the_heap_frozen_at_startup() -> None:
    server = BackgroundServer(ToneEngine())
    url = server.start()
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
            assert r.status == 200
        assert gc.get_freeze_count() > 0  # Server.startup froze the engine, models and imports
    finally:
        server.stop()
    # frozen objects are never collected: left frozen, Triton's bindings report them as leaks at exit
    assert gc.get_freeze_count() == 0
