"""`mlproxy stop`: stop the running stack from any shell, in order, as Ctrl-C in `up` does.

The `mlproxy up` that runs the stack recorded its pid in the resolved file; it gets SIGTERM (only
once /proc confirms it is still supervisord's parent: a pid is never trusted alone) and stops
Jupyter, then MLflow, then ends what they left, as on Ctrl-C. A stack without its `up` is shut
down through supervisord's socket. Under systemd the unit owns the stack: systemctl stops it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from . import procfs, rpc, running
from .config import Settings
from .console import say
from .exits import EXIT_DOWN, EXIT_FAILED
from .rpc import Supervisor, SupervisorUnavailable


def _gone(pid: int) -> bool:
    info = procfs.stat(pid)
    return info is None or info.state == "Z"


def run(settings: Settings, timeout: float) -> int:
    if not running.answers(settings):
        print(f"mlproxy stop: not running (no supervisord on {settings.socket_path})", file=sys.stderr)
        return EXIT_DOWN
    up = running.up_process(settings)
    if up is not None and up.systemd:
        print("mlproxy stop: this stack runs under systemd, which would start it again: "
              "stop it with `sudo systemctl stop mlproxy`", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    supervisor = Supervisor(settings.socket_path)
    signalled = None  # the `up` that stops the stack, once told to
    try:
        supervisord = supervisor.pid()
        parent = procfs.stat(supervisord)
        if up is not None and parent is not None and parent.ppid == up.pid:
            say(f"stopping the stack of `mlproxy up` (pid {up.pid}), as Ctrl-C there would")
            os.kill(up.pid, signal.SIGTERM)
            signalled = up.pid
        else:
            say(f"stopping the stack through supervisord (pid {supervisord})")
            supervisor.shutdown()
    except PermissionError:
        print("mlproxy stop: the stack belongs to another user; run this as that user", file=sys.stderr)
        return EXIT_FAILED
    except SupervisorUnavailable:
        pass  # it stopped meanwhile
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rpc.answers(settings.socket_path, timeout=1) and (signalled is None or _gone(signalled)):
            say("stopped")
            return 0
        time.sleep(0.2)
    print(f"mlproxy stop: still running after {timeout:.0f} s; see `mlproxy status` and `mlproxy logs`", file=sys.stderr)
    return EXIT_FAILED
