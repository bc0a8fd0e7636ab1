"""Requests reach MLflow only once the agent has found it ready: the order of traffic.

MLflow and its front door start at once (agent.start_order = "parallel"), so the front door may
be up before MLflow is. The agent is the one judge of MLflow's readiness: when MLflow passes its
startup probe, the agent opens the gate, a file in the runtime directory naming MLflow's pid; when
that process goes (it exited, or the agent is replacing it), the agent closes it. While it is
closed, the front doors (Jupyter's extension, the Hub service) answer 503 with Retry-After (a
browser gets the page that reloads itself) and send MLflow nothing.

A file, not a message: the doors read it per request with one stat(), a restarted agent finds the
gate as its predecessor left it (and keeps it open for the MLflow it adopts), and `mlproxy up`
removes it before anything starts, so a gate left by an earlier stack never opens a new one.
A front door that no stack started (a `jupyter lab` by hand with no stack running) has no gate.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import write_atomically

CLOSED_MESSAGE = "MLflow is not ready (starting, restarting or failed: `mlproxy status` says which); requests go through once it is"


class TrafficGate:
    """The front doors' side: is MLflow admitted?"""

    def __init__(self, path: Path | None):
        self.path = path  # None: no agent decides, always open

    def is_open(self) -> bool:
        return self.path is None or os.path.exists(self.path)


def admitted_pid(path: Path) -> int | None:
    """The MLflow process the gate is open for (None: closed)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def open_for(path: Path, pid: int) -> None:
    write_atomically(path, f"{pid}\n", 0o600)


def close(path: Path) -> None:
    path.unlink(missing_ok=True)
