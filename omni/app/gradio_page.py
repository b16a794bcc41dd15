"""`omni ui`'s page: a Gradio app whose one `gr.HTML` block runs the browser demo's WebRTC client.

Why not fastrtc or Gradio's own streaming audio (README, "Gradio UI"): fastrtc's component does not load on
gradio 6 and fetches a VAD model at run time; `gr.Audio(streaming=True)` plays about 1.3 s late and cannot be
cut off for barge-in. Here the browser talks WebRTC to `omni serve` itself, with the same client code as the
demo page (`omni/ui/web/app.js`), so a turn is the same turn whichever page it came from.

Same origin: this app forwards `POST /v1/realtime/calls` (the SDP offer, with its query: `user_id`),
`DELETE /v1/realtime/calls/{id}` (hang-up) and `POST /v1/realtime/client_secrets` to the omni server, so the page
never needs CORS and sends no HTTP request to any other address; the media then flows between the browser and
the omni server directly (ICE). Only the headers the protocol needs cross the forwarder: `Content-Type`,
`Authorization` and `X-Omni-Call-Secret` (the hang-up's proof) towards the server; `Content-Type`, `Location`,
`X-Omni-Call-Secret` and `Retry-After` back. A request from a page of another origin is refused (403): the
forwarder is where the omni server's own origin check would otherwise be lost.

A server with keys (`omni serve --api-key`): given the key (`omni ui --api-key KEY`), this app adds
`Authorization: Bearer KEY` to forwarded requests that carry none, so the browser never sees the key (and
whoever can open the page can call the server: keep the page on loopback or behind your own access control).
Without it the page's client asks the user for a key once (`omni/ui/web/app.js`, on the server's 401) and trades it
for a short-lived client secret through the forwarded `client_secrets` route.

Offline: a system-font theme, no analytics (GRADIO_ANALYTICS_ENABLED=False is set before gradio is imported),
no share link.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from omni.ui.pages import WEB_ROOT, call_ui

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

STATIC = {"app.js": "text/javascript", "controls.js": "text/javascript"}
TO_SERVER = ("content-type", "authorization", "x-omni-call-secret")  # request headers that are forwarded
FROM_SERVER = ("location", "x-omni-call-secret", "retry-after")  # response headers that come back (and the type)
OFFER_TIMEOUT = 30.0  # seconds: the omni server answers after gathering ICE (about 0.1-0.5 s on loopback)

# gr.HTML runs this when the block is on the page; the demo client binds to the block's element ids, so it
# is loaded only now, once, and the page's additions after it.
LOADER = """
if (!window.__omniLoading) {
  window.__omniLoading = true;
  const add = (src, next) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = next || null;
    document.body.appendChild(s);
  };
  add("/omni/static/app.js", () => add("/omni/static/controls.js"));
}
"""


def _disable_analytics() -> None:
    # Read by gradio at import time; also what scripts/test.sh exports.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_app(server_url: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app: the forwarded signaling routes, the two scripts, and the Gradio page at `/`. `api_key`:
    the omni server's key, sent for the browser (see the module docstring)."""
    _disable_analytics()
    import gradio as gr
    import httpx
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import FileResponse

    server_url = server_url.rstrip("/")
    app = FastAPI()

    async def forward(method: str, path: str, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return Response(f"requests from {origin} are not allowed\n", status_code=403)
        headers = {k: request.headers[k] for k in TO_SERVER if k in request.headers}
        if api_key and "authorization" not in headers:
            headers["authorization"] = f"Bearer {api_key}"
        query = f"?{request.url.query}" if request.url.query else ""
        # trust_env=False: never route loopback signaling through an HTTP(S)_PROXY from the environment.
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT, trust_env=False) as client:
            try:
                r = await client.request(method, server_url + path + query, content=await request.body(),
                                         headers=headers)
            except httpx.HTTPError as e:
                return Response(f"omni server {server_url} unreachable: {e}\n", status_code=502)
        out = {k: r.headers[k] for k in FROM_SERVER if k in r.headers}
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"), headers=out)

    async def offer(request: Request) -> Response:
        return await forward("POST", "/v1/realtime/calls", request)

    async def hangup(request: Request) -> Response:
        return await forward("DELETE", f"/v1/realtime/calls/{request.path_params['call_id']}", request)

    async def client_secrets(request: Request) -> Response:
        return await forward("POST", "/v1/realtime/client_secrets", request)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found\n", status_code=404)
        return FileResponse(WEB_ROOT / name, media_type=STATIC[name])

    # Starlette routes (the endpoint gets the request): FastAPI's parameter injection would need the annotations
    # resolvable at module level, and these handlers want nothing but the raw request anyway.
    app.router.add_route("/v1/realtime/calls", offer, methods=["POST"])
    app.router.add_route("/v1/realtime/calls/{call_id}", hangup, methods=["DELETE"])
    app.router.add_route("/v1/realtime/client_secrets", client_secrets, methods=["POST"])
    app.router.add_route("/omni/static/{name}", static, methods=["GET"])

    with gr.Blocks(title="omni") as blocks:
        gr.HTML(f'<div id="omni-ui">{call_ui()}</div>', js_on_load=LOADER, elem_id="omni-block")
    # System fonts: the default theme would fetch its web font from a CDN.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(
        app, blocks, path="/", theme=theme, css=(WEB_ROOT / "style.css").read_text(), footer_links=[],
        ssr_mode=False, enable_monitoring=False, mcp_server=False, pwa=False,
    )


class UiServer:
    """The page served by uvicorn on a thread of its own (the omni server keeps its own event loop)."""

    def __init__(self, server_url: str, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)  # connections wait in the backlog until uvicorn runs: the URL works once printed
        bound: Any = self._sock.getsockname()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound[1]}"
        config = uvicorn.Config(build_app(server_url, api_key), log_level="warning", lifespan="on")
        self._server: uvicorn.Server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted."""
        self._server.run(sockets=[self._sock])

    def start(self, timeout: float = 60.0) -> str:
        """Serve on a background thread; returns the page's URL once it accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="omni-ui", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the Gradio page's server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Gradio page's server did not start within {timeout:g} s")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()
