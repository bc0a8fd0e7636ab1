"""Idle connections to MLflow: reused while fresh, never once MLflow hung up or the limit passed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket

import pytest
from tornado import iostream

from mlproxy_supervisor.relay.pool import IdleConnections

MLFLOW = ("/run/mlflow.sock", "localhost", 5001)


OPEN: list[socket.socket] = []  # MLflow's ends, closed after each test


def connection() -> tuple[iostream.IOStream, socket.socket]:
    """A real connected stream (ours) and its peer (MLflow's end)."""
    ours, theirs = socket.socketpair()
    OPEN.append(theirs)
    return iostream.IOStream(ours), theirs


@pytest.fixture(autouse=True)
def _close_peers():
    yield
    while OPEN:
        OPEN.pop().close()


def run(scenario) -> None:
    # In a thread of its own: in a full run, the session's playwright driver keeps an event loop
    # running in the main thread, and asyncio.run() refuses to start a second one there.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, scenario()).result()


def test_a_connection_given_back_is_taken_again_and_only_once():
    async def scenario():
        idle = IdleConnections(idle_limit=60)
        stream, _peer = connection()
        idle.give_back(MLFLOW, stream)
        assert idle.take(MLFLOW) is stream
        assert idle.take(MLFLOW) is None
        assert idle.take(("/other.sock", "localhost", 5001)) is None
        stream.close()

    run(scenario)


def test_the_most_recently_used_connection_goes_first():
    async def scenario():
        idle = IdleConnections(idle_limit=60)
        older, _peer_a = connection()
        newer, _peer_b = connection()
        idle.give_back(MLFLOW, older)
        idle.give_back(MLFLOW, newer)
        assert idle.take(MLFLOW) is newer
        assert idle.take(MLFLOW) is older
        older.close()
        newer.close()

    run(scenario)


# While the connection sat idle, MLflow restarted (its end is gone), or sent bytes that answer no
# request of ours: either way the connection must not carry the next request.
DISTURBANCES = {
    "mlflow closed its end": lambda peer: peer.close(),
    "mlflow sent unasked bytes": lambda peer: peer.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n"),
}


@pytest.mark.parametrize("disturbance", DISTURBANCES)
def test_a_connection_disturbed_while_idle_is_dropped_not_used(disturbance):
    async def scenario():
        idle = IdleConnections(idle_limit=60)
        stream, peer = connection()
        idle.give_back(MLFLOW, stream)
        DISTURBANCES[disturbance](peer)
        assert idle.take(MLFLOW) is None
        assert stream.closed()

    run(scenario)


def test_a_connection_idle_past_the_limit_is_closed_by_us_not_reused():
    async def scenario():
        idle = IdleConnections(idle_limit=0.1)
        stream, peer = connection()
        idle.give_back(MLFLOW, stream)
        for _ in range(300):  # the sweep closes it without any request asking
            if stream.closed():
                break
            await asyncio.sleep(0.1)
        assert stream.closed()
        assert idle.count() == 0
        assert idle.take(MLFLOW) is None
        assert peer.recv(1) == b""  # MLflow's end sees our close
        peer.close()

    run(scenario)


def test_an_expired_connection_is_not_taken_even_before_the_sweep():
    async def scenario():
        idle = IdleConnections(idle_limit=0.1)
        stream, _peer = connection()
        idle.give_back(MLFLOW, stream)
        idle._sweep.cancel()  # the sweep is late; take() must still check the age itself
        await asyncio.sleep(0.3)
        assert idle.take(MLFLOW) is None
        assert stream.closed()

    run(scenario)


def test_no_more_than_max_idle_are_kept():
    async def scenario():
        idle = IdleConnections(idle_limit=60, max_idle=2)
        pairs = [connection() for _ in range(3)]
        streams = [stream for stream, _peer in pairs]
        for stream in streams:
            idle.give_back(MLFLOW, stream)
        assert idle.count() == 2
        assert streams[2].closed()
        for stream, peer in pairs:
            stream.close()
            peer.close()

    run(scenario)


def test_a_closed_stream_is_not_kept():
    async def scenario():
        idle = IdleConnections(idle_limit=60)
        stream, _peer = connection()
        stream.close()
        idle.give_back(MLFLOW, stream)
        assert idle.count() == 0

    run(scenario)


def test_a_connection_with_bytes_in_tornados_buffer_is_never_kept():
    """Bytes MLflow sent past the end of the last response, already read from the socket into
    tornado's buffer (the socket itself looks quiet): they would be the next request's answer."""

    async def scenario():
        idle = IdleConnections(idle_limit=60)
        stream, peer = connection()
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
        await stream.read_until(b"\r\n\r\n")  # the response; the stray bytes stay buffered
        assert stream._read_buffer_size > 0  # tornado's internal name: this test pins it
        idle.give_back(MLFLOW, stream)
        assert idle.count() == 0 and stream.closed()

    run(scenario)
