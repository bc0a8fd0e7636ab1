"""The relay frames a request body for MLflow exactly as tornado read it from the client.

`request_framing` must agree with tornado's server side on every request: refuse what tornado
refuses (tornado answers 400), and otherwise name the body tornado reads. The differential test
feeds the same bytes to a real tornado HTTP1Connection over a socketpair.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection

from mlproxy_supervisor.relay.stream import Framing, request_framing

BODY = b"0123456789" * 3


class _Reader(httputil.HTTPMessageDelegate):
    def __init__(self):
        self.body = b""
        self.finished = False

    def data_received(self, chunk):
        self.body += chunk

    def finish(self):
        self.finished = True


def tornado_reads(head: bytes, body: bytes) -> bytes | None:
    """The body tornado's server reads after `head`, or None if it refuses the request."""

    async def read():
        ours, theirs = socket.socketpair()
        theirs.sendall(head + body)
        theirs.shutdown(socket.SHUT_WR)
        reader = _Reader()
        connection = HTTP1Connection(iostream.IOStream(ours), is_client=False)
        reading = asyncio.ensure_future(connection.read_response(reader))
        for _ in range(500):  # done when the body is in (tornado then waits for our answer) or refused
            if reader.finished or reading.done():
                break
            await asyncio.sleep(0.01)
        connection.close()
        theirs.close()
        await asyncio.gather(reading, return_exceptions=True)
        return reader.body if reader.finished else None

    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # a loop of its own (see test_connections)
        return thread.submit(asyncio.run, read()).result()


def ours(head: bytes) -> Framing | None:
    lines = head.decode("latin-1").split("\r\n", 1)[1]
    try:
        return request_framing(httputil.HTTPHeaders.parse(lines))
    except (httputil.HTTPInputError, ValueError):
        return None


LENGTHS = ["30", "030", "+30", "0x1e", "30,30", "30, 30", "30,31", "-30", "\u0663\u0660", "30 ", "3 0", "", "1e1", "30;"]
CODINGS = ["chunked", "Chunked", "CHUNKED", "chunked, identity", "identity", "gzip, chunked", "xchunked", "chunked;q=1", ""]


def chunked_body() -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.tuples(st.just("Content-Length"), st.sampled_from(LENGTHS)), st.tuples(st.just("Transfer-Encoding"), st.sampled_from(CODINGS))), max_size=3),
    st.sampled_from(["GET", "POST", "HEAD", "DELETE", "OPTIONS", "PUT"]),
)
def test_request_framing_agrees_with_tornados_reading(framing_headers, method):
    head = f"{method} /x HTTP/1.1\r\nHost: h\r\n".encode() + b"".join(f"{n}: {v}\r\n".encode() for n, v in framing_headers) + b"\r\n"
    try:
        framing = ours(head)
    except Exception as error:  # anything else would be a 500 in the handler
        pytest.fail(f"request_framing raised {error!r} for {framing_headers}")
    body = chunked_body() if framing is not None and framing.chunked else BODY
    read = tornado_reads(head, body)
    if framing is None:
        assert read is None, f"we refuse {framing_headers}, tornado reads {read!r}"
        return
    assert read is not None, f"tornado refuses {framing_headers}, we frame it as {framing}"
    expected = BODY if framing.chunked else BODY[: framing.length or 0] if framing.length is not None else b""
    assert read == expected, (framing_headers, framing, read)
