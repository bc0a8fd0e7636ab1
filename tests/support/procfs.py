"""What /proc says that only the tests ask about: connections a unix socket's server holds, and a
process's peak memory. The product's own readers are in mlproxy_supervisor/procfs.py."""

from __future__ import annotations

from pathlib import Path


def unix_connections(path) -> int:
    """How many connections the server side of a unix socket holds open."""
    return len(unix_connection_inodes(path))


def unix_connection_inodes(path) -> set[str]:
    """The server side's accepted sockets of a unix socket, which /proc/net/unix lists with the
    listener's path in state 03 (connected), by inode: the same inode is the same connection."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {fields[6] for line in lines if (fields := line.split()) and len(fields) == 8 and fields[5] == "03" and fields[7] == str(path)}


def peak_rss(pid: int) -> int | None:
    """VmHWM: the most memory the process has ever had resident, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
