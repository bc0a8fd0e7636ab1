"""HTTP/1.1 spoken raw over a socket: bytes exactly as written, answers parsed just enough to count
them, and the ways a client leaves (a close, a reset). For the protocol tests and the fuzzer, which
must send what no HTTP library would."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; repeats joined by ", "
    body: bytes = b""


def request(method: str, target: str, headers: list[tuple[str, str]] | dict | None = None, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """One request's bytes, headers in the order given, nothing added (no Host, no length)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    head = f"{method} {target} {version}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in pairs) + "\r\n"
    return head.encode("latin-1", errors="replace") + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body made of these chunks, with its last-chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece) + b"0\r\n\r\n"


def parse_responses(data: bytes, head_requests: int = 0) -> tuple[list[Response], bytes]:
    """Complete responses at the start of data, and what is left. A response to HEAD (the first
    `head_requests` ones are taken to be) and 1xx/204/304 have no body."""
    responses = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, data
        lines = data[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return responses, data  # not a response: leave it to the caller
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        rest = data[end + 4 :]
        if 100 <= status < 200:
            data = rest
            continue
        if len(responses) < head_requests or status in (204, 304):
            body, rest = b"", rest
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _dechunk(rest)
            if decoded is None:
                return responses, data
            body, rest = decoded
        elif "content-length" in headers:
            length = int(headers["content-length"].split(",")[0])
            if len(rest) < length:
                return responses, data
            body, rest = rest[:length], rest[length:]
        else:
            body, rest = rest, b""  # until the connection closed
        responses.append(Response(status, headers, body))
        data = rest


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    body = b""
    while True:
        line_end = data.find(CRLF)
        if line_end < 0:
            return None
        size = int(data[:line_end].split(b";")[0] or b"0", 16)
        data = data[line_end + 2 :]
        if size == 0:
            trailer_end = data.find(CRLF)
            while trailer_end > 0:  # trailer fields, then the empty line
                data = data[trailer_end + 2 :]
                trailer_end = data.find(CRLF)
            return (body, data[2:]) if trailer_end == 0 else None
        if len(data) < size + 2:
            return None
        body, data = body + data[:size], data[size + 2 :]


class RawConnection:
    """One client connection to (host, port)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10):
        self.socket = socket.create_connection((host, port), timeout=timeout)
        self.received = b""
        self.closed_by_server = False

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def read_responses(self, count: int, timeout: float, head_requests: int = 0) -> list[Response]:
        """Up to `count` complete responses, waiting at most `timeout` seconds for them (fewer if
        the server closes or goes quiet)."""
        deadline = time.monotonic() + timeout
        while True:
            responses, _rest = parse_responses(self.received, head_requests)
            if len(responses) >= count or self.closed_by_server:
                return responses
            left = deadline - time.monotonic()
            if left <= 0:
                return responses
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                return parse_responses(self.received, head_requests)[0]
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed_by_server = True
            self.received += data

    def close(self) -> None:
        self.socket.close()

    def reset(self) -> None:
        """Leave abruptly: the kernel sends RST instead of FIN (SO_LINGER 0)."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.socket.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
