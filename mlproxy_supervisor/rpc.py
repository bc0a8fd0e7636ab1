"""supervisord's XML-RPC interface over its unix socket, with timeouts.

supervisor's own transport has no timeout, and a frozen supervisord (SIGSTOP) must show up as an
error within seconds, not hang the agent forever.
"""

from __future__ import annotations

import http.client
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from .local_http import UnixHTTPConnection
from .timings import RPC_TIMEOUT

# supervisord's process states (supervisor/states.py), by name.
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN",
)  # fmt: skip
STATES = (STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN)
ALIVE_STATES = frozenset({STARTING, RUNNING, STOPPING})
SHUTDOWN_STATE_FAULT = 6  # supervisor.xmlrpc.Faults.SHUTDOWN_STATE


class SupervisorUnavailable(Exception):
    """supervisord does not answer on its socket (not running, frozen or refusing)."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    start: float  # 0 when never started
    stop: float
    now: float
    exitstatus: int
    spawnerr: str

    @classmethod
    def from_rpc(cls, info: dict) -> ProcessInfo:
        return cls(
            name=info["name"],
            state=info["statename"],
            pid=info["pid"],
            start=float(info["start"]),
            stop=float(info["stop"]),
            now=float(info["now"]),
            exitstatus=info["exitstatus"],
            spawnerr=info.get("spawnerr", ""),
        )

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.start) if self.state in ALIVE_STATES and self.start else 0.0


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float):
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host):
        return UnixHTTPConnection(self._path, "localhost", None, self._timeout)


class Supervisor:
    """The calls the agent and the CLI make; every failure becomes SupervisorUnavailable."""

    def __init__(self, socket_path: Path, timeout: float = RPC_TIMEOUT):
        self.socket_path = socket_path
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=_UnixTransport(str(socket_path), timeout), allow_none=True
        )

    def _call(self, method: str, *args):
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == SHUTDOWN_STATE_FAULT:
                raise SupervisorUnavailable(f"supervisord at {self.socket_path} is shutting down") from None
            raise
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as error:
            raise SupervisorUnavailable(f"supervisord at {self.socket_path}: {error}") from None

    def replies(self) -> bool:
        """Whether supervisord replies at all, a fault included: while it stops or reloads it
        answers every call with SHUTDOWN_STATE, and that is a live supervisord, not a frozen one."""
        try:
            self._proxy.supervisor.getState()
        except xmlrpc.client.Fault:
            return True
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError):
            return False
        return True

    def state(self) -> str:
        """RUNNING, RESTARTING, SHUTDOWN or FATAL (supervisord's own state)."""
        return self._call("getState")["statename"]

    def pid(self) -> int:
        return self._call("getPID")

    def processes(self) -> dict[str, ProcessInfo]:
        return {info["name"]: ProcessInfo.from_rpc(info) for info in self._call("getAllProcessInfo")}

    def start(self, name: str) -> None:
        try:
            self._call("startProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop(self, name: str) -> None:
        try:
            self._call("stopProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def shutdown(self) -> None:
        """Stop every program (in reverse priority order) and exit."""
        self._call("shutdown")

    def tail(self, name: str, length: int = 2000) -> str:
        """The last bytes of a program's log, or '' when it logs elsewhere (stdout mode)."""
        try:
            text, _offset, _overflow = self._call("tailProcessStdoutLog", name, 0, length)
        except xmlrpc.client.Fault:
            return ""
        return text


def answers(socket_path: Path, timeout: float = 2.0) -> bool:
    """Whether a supervisord answers on this socket: the stack is running. (Any call also ends the
    one-second wait before supervisord's first start of its programs; `up` relies on that.)"""
    if not socket_path.exists():
        return False
    try:
        Supervisor(socket_path, timeout).state()
    except SupervisorUnavailable:
        return False
    return True
