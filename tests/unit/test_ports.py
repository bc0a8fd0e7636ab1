"""The tests' port allocator: below the ephemeral range, free, and never the same port for two
test processes on the machine."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

from tests.stack import ROOT
from tests.support import ports

HOLD = "from tests.support.ports import free_port; print(free_port(), free_port(2), flush=True); input()"


def test_ports_lie_below_the_ephemeral_range_and_are_handed_out_once():
    given = [ports.free_port() for _ in range(4)]
    block = ports.free_port(span=3)
    given += [block, block + 1, block + 2]
    assert len(set(given)) == len(given)
    assert all(ports.FIRST_PORT <= port < min(ports.LAST_PORT, ports.ephemeral_start()) for port in given), given


def test_a_port_something_is_bound_to_is_not_free():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert not ports._bindable(holder.getsockname()[1])


def test_another_process_gets_other_ports_and_leaves_them_when_it_ends():
    other = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first, block = map(int, other.stdout.readline().split())
        theirs = {first, block, block + 1}
        ours = {ports.free_port() for _ in range(4)}
        assert not theirs & ours, (theirs, ours)
        for port in theirs:
            assert not _lockable(port), f"{port}: its lock is not held by the process it was given to"
    finally:
        other.communicate("\n", timeout=30)
    assert all(_lockable(port) for port in theirs), "a process that ended still holds its ports"


def _lockable(port: int) -> bool:
    descriptor = os.open(ports.LOCK_DIR / f"{port}.lock", os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True
