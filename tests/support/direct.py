"""MLflow reached directly, on the stack's own listener (its unix socket by default), bypassing Jupyter.

Only the stack's own user can do this: the socket sits in the 0700 runtime directory. Tests use it
to look at MLflow's state independently of the route under test, and `forward` gives a browser a
TCP port onto it (a browser cannot open a unix socket).
"""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from mlproxy_supervisor.local_http import connection as http_connection


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise AssertionError(f"MLflow answered {self.status_code}: {self.content[:300]!r}")


class DirectMLflow:
    """A requests-like client over MLflow's unix socket (the Host MLflow sees is loopback)."""

    def __init__(self, unix_socket: Path, timeout: float = 30):
        self.unix_socket, self.timeout = unix_socket, timeout

    def request(self, method: str, path: str, params: dict | None = None, json_body=None, data: bytes | None = None,
                headers: dict | None = None) -> Answer:  # fmt: skip
        headers = {"Host": "127.0.0.1", **(headers or {})}
        if json_body is not None:
            data, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        target = path + (f"?{urlencode(params)}" if params else "")
        connection = http_connection("http://127.0.0.1/", self.unix_socket, self.timeout)
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def get(self, path: str, params: dict | None = None, **kwargs) -> Answer:
        return self.request("GET", path, params=params, **kwargs)

    def post(self, path: str, json: dict | None = None, **kwargs) -> Answer:
        return self.request("POST", path, json_body=json, **kwargs)

    def put(self, path: str, data: bytes = b"", **kwargs) -> Answer:
        return self.request("PUT", path, data=data, **kwargs)


@contextmanager
def forward(unix_socket: Path, port: int = 0):
    """A loopback TCP port (port 0: any free one) relaying to MLflow's socket, for the length of the block."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    bound = []

    async def relay(reader, writer):
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def connected(client_reader, client_writer):
        try:
            mlflow_reader, mlflow_writer = await asyncio.open_unix_connection(str(unix_socket))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(relay(client_reader, mlflow_writer), relay(mlflow_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(connected, "127.0.0.1", port)
        bound.append(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(30):
        raise AssertionError(f"could not listen on 127.0.0.1:{port} to forward to {unix_socket}")
    try:
        yield f"http://127.0.0.1:{bound[0]}"
    finally:
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
        thread.join(30)
