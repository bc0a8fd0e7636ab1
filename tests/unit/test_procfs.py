"""procfs against real processes and sockets of this test."""

from __future__ import annotations

import os
import socket
import subprocess

from mlproxy_supervisor import procfs


def test_children_groups_and_descendants_of_real_processes():
    # A child in its own session, with a grandchild in the same process group.
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        grandchildren: list[int] = []
        while not grandchildren:
            grandchildren = procfs.children(child.pid)
        assert child.pid in procfs.children(os.getpid())
        assert sorted(procfs.group_members(child.pid)) == sorted([child.pid, *grandchildren])
        assert procfs.is_descendant(grandchildren[0], os.getpid())
        assert not procfs.is_descendant(os.getpid(), child.pid)
    finally:
        os.killpg(child.pid, 9)
        child.wait()
    assert procfs.stat(child.pid) is None and procfs.children(child.pid) == []


def test_listening_pids_and_command_line():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert procfs.listening_pids(port) == []  # bound, not listening
        listener.listen()
        assert procfs.listening_pids(port) == [os.getpid()]
    assert procfs.listening_pids(port) == []
    assert "pytest" in procfs.command_line(os.getpid())
    assert procfs.command_line(2**22 + 1) is None  # above pid_max: no such process
