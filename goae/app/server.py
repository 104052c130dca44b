"""The app's web server: its limits (the size of a request) and its launch. The middlewares are plain ASGI."""
from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

MAX_UPLOAD_MB = 30  # every way a photo comes in: uploads, inline data: URLs, API calls


class RequestSizeLimit:
    """ASGI middleware: request bodies over `max_bytes` get HTTP 413 on every route, so a photo sent inline
    (a data: URL inside an API call's JSON) meets the same limit as an upload (issue #15)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = f"Request too large: the limit for a photo is {MAX_UPLOAD_MB} MB.".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class QuickHead:
    """ASGI middleware: `HEAD /` answers 200 at once instead of rendering the page and dropping it. Gradio's
    launch checks its own page with HEAD requests that time out after 3 s, and exits when one does (issue #31):
    on a busy machine, with visitors already loading the page, rendering can take longer than that."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD" and scope["path"] in ("", "/"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8")]})
            return await send({"type": "http.response.body", "body": b""})
        return await self.app(scope, receive, send)


def mcp_available() -> bool:
    """Gradio's MCP server needs the `gradio[mcp]` extra (the `mcp` package)."""
    return importlib.util.find_spec("mcp") is not None


def launch(demo, examples: list[str], host: str | None = None, port: int | None = None, share: bool = False):
    """Serve the page (gr.Blocks `demo`): uploads and requests limited to a photo's size, only the example
    photos' folders readable, no internal error shown, the MCP server where its extra is installed."""
    from starlette.middleware import Middleware

    # SIGTERM (a Space stopping, `kill`) ends like Ctrl-C: Gradio closes and the app's folders are removed.
    signal.signal(signal.SIGTERM, lambda *_: signal.default_int_handler(signal.SIGINT, None))
    allowed = sorted({str(Path(p).parent) for p in examples})
    body_limit = MAX_UPLOAD_MB * 2**20 * 4 // 3 + 2**20  # a photo as base64 inside an API call's JSON
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{MAX_UPLOAD_MB}mb",
                       allowed_paths=allowed, show_error=False, footer_links=["api", "gradio", "settings"],
                       mcp_server=mcp_available(),
                       app_kwargs={"middleware": [Middleware(QuickHead),
                                                  Middleware(RequestSizeLimit, max_bytes=body_limit)]})
