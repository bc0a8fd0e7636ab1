"""What Linux's /proc says about processes: parents, process groups, listening sockets.

Processes come and go while we read, so a vanished pid is skipped, never an error; processes
of other users whose details we may not read are skipped too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class Stat(NamedTuple):
    state: str  # R, S, D, Z (zombie), T (stopped), ...
    ppid: int
    pgrp: int
    cpu_ticks: int = 0  # utime + stime, in clock ticks: grows while the process does any work

    @property
    def frozen(self) -> bool:
        return self.state in ("T", "t")  # stopped by a signal (SIGSTOP) or traced


def pids() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def stat(pid: int) -> Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()  # state, ppid, pgrp, ... [11] utime, [12] stime
    return Stat(state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]), cpu_ticks=int(fields[11]) + int(fields[12]))


def children(parent: int) -> list[int]:
    return [pid for pid in pids() if (info := stat(pid)) and info.ppid == parent]


def group_members(pgid: int) -> list[int]:
    return [pid for pid in pids() if (info := stat(pid)) and info.pgrp == pgid]


def is_descendant(pid: int, ancestor: int, depth: int = 10) -> bool:
    for _ in range(depth):
        info = stat(pid)
        if info is None or info.ppid <= 1:
            return False
        if info.ppid == ancestor:
            return True
        pid = info.ppid
    return False


def _tcp_socket_inodes(state: str, column: int, port: int) -> set[str]:
    """Socket inodes in /proc/net/tcp{,6} in a TCP state ("0A" LISTEN, "01" ESTABLISHED) whose
    local (column 1) or remote (column 2) address has this port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[column].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def listening_pids(port: int) -> list[int]:
    """Pids of processes listening on a TCP port."""
    inodes = _tcp_socket_inodes("0A", 1, port)
    if not inodes:
        return []
    return [pid for pid in pids() if inodes & _open_files(pid)]


def _open_files(pid: int) -> set[str]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    links = set()
    for fd in fds:
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile (listdir's own descriptor, when pid is us)
    return links


def command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
