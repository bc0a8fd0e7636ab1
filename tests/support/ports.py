"""TCP ports for the tests' servers, free and reserved machine-wide for the life of this process.

Every port a test server listens on comes from free_port(), never from a number in a test:

- Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default),
  from which any process's outgoing connection may take a port at any moment: a port there can be
  held by a client between our check and the server's bind (it failed a CI run once).
- Free now: nothing is bound to it on any IPv4 or IPv6 address, not even in TIME_WAIT.
- Reserved: this process holds an flock on LOCK_DIR/<port>.lock from then on, and skips a port
  whose lock another process holds, so two test processes on the machine (two pytest runs, a test
  run and a benchmark) never get the same port. The kernel drops the lock when the process ends,
  however it ends, so the ports of a dead run are free again; the lock files themselves stay.

Ports are never handed out twice by one process either: a test that needs the same ports twice
(a restart, two stacks sharing one) keeps what it was given.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
import threading
from pathlib import Path

FIRST_PORT = 10000
LAST_PORT = 32000  # and below the ephemeral range, wherever this machine starts it
LOCK_DIR = Path(tempfile.gettempdir()) / "mlproxy-test-ports"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_reserved: dict[int, int] = {}  # port -> the descriptor holding its lock, open until we exit
_next = FIRST_PORT
_mutex = threading.Lock()


def ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(span: int = 1) -> int:
    """A free port reserved for this process; with span > 1, the first of that many consecutive
    ones (a server that also listens on port+1 ... port+span-1)."""
    global _next
    end = min(LAST_PORT, ephemeral_start())
    with _mutex:
        port = _next
        while port + span <= end:
            taken = next((p for p in range(port, port + span) if not _reserve(p)), None)
            if taken is None:
                _next = port + span
                return port
            for p in range(port, taken):  # a block cut short: give back what it had taken
                os.close(_reserved.pop(p))
            port = taken + 1
    raise RuntimeError(f"no {span} free port(s) left in {FIRST_PORT}-{end - 1} (below the ephemeral range; locks in {LOCK_DIR})")


def _reserve(port: int) -> bool:
    """Lock the port for this process if no other holds it and nothing is bound to it."""
    if port in _reserved:
        return False
    descriptor = _open_lock(LOCK_DIR / f"{port}.lock")
    if descriptor is None:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False  # another test process has it
        raise
    if not _bindable(port):
        os.close(descriptor)  # and with it the lock
        return False
    _reserved[port] = descriptor
    return True


def _open_lock(path: Path) -> int | None:
    """The lock file's descriptor (not inherited by children: their lifetime is not ours)."""
    if not LOCK_DIR.is_dir():
        LOCK_DIR.mkdir(exist_ok=True)
        try:
            LOCK_DIR.chmod(0o1777)  # every user's test runs share it, like /tmp
        except PermissionError:
            pass
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:  # another user's lock file, where fs.protected_regular refuses O_CREAT
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


def _bindable(port: int) -> bool:
    """Nothing is bound to the port on any address (no SO_REUSEADDR: TIME_WAIT counts as taken)."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with probe:
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return False
                # EADDRNOTAVAIL and the like: this family has no such address here, nothing to hold it
    return True
