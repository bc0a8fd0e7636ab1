"""The relay's own answers, as MLflow's clients and a person in a browser each want them.

MLflow's REST clients read `error_code` (and retry 502, 503 and 504); a browser asking for a page
while MLflow is away gets a page that reloads itself.
"""

from __future__ import annotations

import html
import json

RETRY_AFTER = 5  # seconds, for clients while MLflow is not answering
# Our errors, as MLflow's REST API spells them.
ERROR_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 413: "RESOURCE_EXHAUSTED",
    502: "TEMPORARILY_UNAVAILABLE", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
UNAVAILABLE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}"><title>MLflow is starting</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>MLflow is not answering yet</h1>
<p>{message}</p>
<p>It is starting or restarting (<code>mlproxy status</code> tells which). This page reloads itself every {retry} seconds.</p>
</body></html>
"""


def write(handler, status_code: int, message: str | None, error_code: str | None = None) -> None:
    """Finish `handler` (a tornado RequestHandler) with our answer for `status_code`; `error_code`
    (one of MLflow's) where ERROR_CODES has none for it."""
    handler.set_status(status_code)
    if status_code in (502, 503, 504):
        handler.set_header("Retry-After", str(RETRY_AFTER))
    # Answered before the body was read, tornado hangs up after this response without saying so:
    # say it, or a client reusing the connection gets a reset.
    handler.set_header("Connection", "close")
    request = handler.request
    if request.method == "GET" and "text/html" in request.headers.get("Accept", "") and status_code in (502, 503, 504):
        handler.set_header("Content-Type", "text/html; charset=UTF-8")
        handler.set_header("Cache-Control", "no-store")
        handler.finish(UNAVAILABLE_PAGE.format(retry=RETRY_AFTER, message=html.escape(message or "")))
    else:
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps({"error_code": error_code or ERROR_CODES[status_code], "message": message}))
