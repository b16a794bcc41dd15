"""The pages' markup: one conversation UI (`web/call.html`: controls, camera preview, levels, latency figures,
settings, recalled memory, transcript) shown by both the browser demo (`web/index.html`, served by `omni serve`)
and the Gradio page (`omni/app/gradio_page.py`), driven by the same scripts (`web/app.js`, `web/controls.js`)."""

from __future__ import annotations

from pathlib import Path

WEB_ROOT = Path(__file__).resolve().parent / "web"
CALL_MARK = "<!-- call.html -->"


def call_ui() -> str:
    """The conversation UI as an HTML fragment."""
    return (WEB_ROOT / "call.html").read_text(encoding="utf-8")


def demo_page() -> str:
    """The browser demo: its page shell with the conversation UI in place."""
    shell = (WEB_ROOT / "index.html").read_text(encoding="utf-8")
    if CALL_MARK not in shell:
        raise RuntimeError(f"{WEB_ROOT / 'index.html'} lost its {CALL_MARK} mark")
    return shell.replace(CALL_MARK, call_ui())
