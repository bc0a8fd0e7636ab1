"""Code run in a Jupyter kernel over Jupyter's websocket API, as a notebook's page runs a cell.

Tornado and the standard library only: the system tier runs it inside its container too, where
tests/support is /mnt/support and the installation's Python has no `tests` package.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def execute(base: str, token: str, kernel_id: str, code: str, timeout: float = 120, store_history: bool = False) -> tuple[str, str]:
    """Run code in the kernel kernel_id of the Jupyter at base (http://host:port); return the
    execute_reply's status and what the code printed (tracebacks included)."""
    request = HTTPRequest(f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels", headers={"Authorization": f"token {token}"})
    connection = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    connection.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": store_history, "user_expressions": {}, "allow_stdin": False},
    }))  # fmt: skip
    output, status = [], None
    while status is None:
        message = json.loads(await asyncio.wait_for(connection.read_message(), timeout))
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            output.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            output.append("\n".join(message["content"]["traceback"]))
        elif message["msg_type"] == "execute_reply":
            status = message["content"]["status"]
    connection.close()
    return status, "".join(output)
