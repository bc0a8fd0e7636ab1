"""Pages served from another origin (http://127.0.0.1:<another port>/): the site that attacks, in the
same browser where the user is logged in. Same *site* as the stack (127.0.0.1), so the browser
attaches the stack's cookies to its requests; another *origin*, so the stack must refuse them."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.ports import free_port


class OtherOrigin:
    """serve(html) -> the URL of a new page on this origin; close() when done (or use `with`)."""

    def __init__(self, port: int | None = None):
        pages: dict[str, bytes] = {}
        self.pages = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_port}"

    def serve(self, html: str, path: str | None = None) -> str:
        path = path or f"/{uuid.uuid4().hex}.html"
        self.pages[path] = html.encode()
        return f"{self.origin}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OtherOrigin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
