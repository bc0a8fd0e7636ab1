"""Builds the status document (status_document.py) from what the agent knows."""

from __future__ import annotations

import os
from collections import deque

from ..config import Settings
from ..rpc import ProcessInfo
from ..status_document import (
    ErrorReport,
    EventEntry,
    ProbeReport,
    RouteReport,
    ServiceReport,
    StatusDocument,
    SupervisordReport,
    Urls,
    iso,
)
from .reconcile import Event, Memory, ProbeResult


def _probe(result: ProbeResult | None) -> ProbeReport | None:
    if result is None:
        return None
    return ProbeReport(kind=result.kind, ok=result.ok, latency_ms=round(result.latency * 1000, 1), at=iso(result.at), detail=result.detail)


class EventLog:
    """Recent events, kept for the status document and printed as the agent's event log."""

    def __init__(self, size: int = 50):
        self.entries: deque[EventEntry] = deque(maxlen=size)

    def record(self, event: Event, wall: float) -> str:
        entry = EventEntry(at=iso(wall), service=event.service, event=event.kind, detail=event.detail)
        self.entries.append(entry)
        return f"{entry.at} {event.service} {event.kind}" + (f": {event.detail}" if event.detail else "")


def status_line(memory: Memory) -> str:
    """The one-line summary used for systemd's STATUS= and the log."""
    if not memory.supervisor_available:
        return f"{memory.overall.value}: supervisord is not answering on its socket"
    parts = [f"{name} {mem.phase.value}" for name, mem in memory.services.items()]
    route = "route ok" if memory.route.ready else "route not ready"
    storage = "".join(f"; disk nearly full: {problem}" for problem in memory.storage_problems)
    return f"{memory.overall.value}: " + ", ".join(parts) + f", {route}{storage}"


def status_document(
    memory: Memory,
    processes: dict[str, ProcessInfo],
    settings: Settings,
    events: EventLog,
    supervisor_pid: int | None,
    wall: float,
) -> StatusDocument:
    services = {}
    for name, mem in memory.services.items():
        info = processes.get(name)
        services[name] = ServiceReport(
            phase=mem.phase.value,
            state=info.state if info else "UNKNOWN",
            pid=info.pid if info else 0,
            uptime_s=round(info.uptime, 1) if info else 0.0,
            restarts=mem.restarts,
            stopped_by_operator=mem.operator_stopped,
            restart_pending=mem.restart_pending,
            last_probe=_probe(mem.last_probe),
            last_error=ErrorReport(message=mem.last_error, at=iso(mem.last_error_at), log_tail=mem.log_tail.splitlines()[-15:])
            if mem.last_error
            else None,
        )
    if settings.team_mode:
        urls = Urls(jupyter=f"{settings.team.public_url}/hub/", mlflow=settings.team_url, proxy=settings.team_url)
    else:
        base = settings.jupyter_local_url
        urls = Urls(jupyter=f"{base}/", mlflow=f"{base}/mlflow/", proxy=f"{base}/proxy/{settings.mlflow.port}/")
    return StatusDocument(
        overall=memory.overall.value,
        summary=status_line(memory),
        updated=iso(wall),
        agent_pid=os.getpid(),
        supervisord=SupervisordReport(available=memory.supervisor_available, pid=supervisor_pid),
        route=RouteReport(ready=memory.route.ready, last_probe=_probe(memory.route.last_probe), last_error=memory.route.last_error or None),
        urls=urls,
        services=services,
        storage_problems=list(memory.storage_problems),
        events=list(events.entries),
    )
