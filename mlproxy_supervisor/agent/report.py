"""The status document: what the agent knows, written atomically for `mlproxy status` and others.

It never holds the token: URLs are given without it.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path

from ..config import Settings
from ..rpc import ProcessInfo
from .reconcile import SERVICES, Event, Memory, ProbeResult

SCHEMA_VERSION = 1


def _iso(wall: float) -> str | None:
    if not wall:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def _probe(result: ProbeResult | None) -> dict | None:
    if result is None:
        return None
    return {
        "kind": result.kind,
        "ok": result.ok,
        "latency_ms": round(result.latency * 1000, 1),
        "at": _iso(result.at),
        "detail": result.detail,
    }


class EventLog:
    """Recent events, kept for the status document and printed as the agent's event log."""

    def __init__(self, size: int = 50):
        self.entries: deque[dict] = deque(maxlen=size)

    def record(self, event: Event, wall: float) -> str:
        entry = {"at": _iso(wall), "service": event.service, "event": event.kind, "detail": event.detail}
        self.entries.append(entry)
        return f"{entry['at']} {event.service} {event.kind}" + (f": {event.detail}" if event.detail else "")


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
) -> dict:
    services = {}
    for name in SERVICES:
        mem, info = memory.services[name], processes.get(name)
        services[name] = {
            "phase": mem.phase.value,
            "state": info.state if info else "UNKNOWN",
            "pid": info.pid if info else 0,
            "uptime_s": round(info.uptime, 1) if info else 0.0,
            "restarts": mem.restarts,
            "stopped_by_operator": mem.operator_stopped,
            "last_probe": _probe(mem.last_probe),
            "last_error": {
                "message": mem.last_error,
                "at": _iso(mem.last_error_at),
                "log_tail": mem.log_tail.splitlines()[-15:],
            }
            if mem.last_error
            else None,
        }
    base = settings.jupyter_local_url
    return {
        "schema": SCHEMA_VERSION,
        "overall": memory.overall.value,
        "summary": status_line(memory),
        "updated": _iso(wall),
        "agent_pid": os.getpid(),
        "supervisord": {"available": memory.supervisor_available, "pid": supervisor_pid},
        "route": {
            "ready": memory.route.ready,
            "last_probe": _probe(memory.route.last_probe),
            "last_error": memory.route.last_error or None,
        },
        "urls": {"jupyter": f"{base}/", "mlflow": f"{base}/mlflow/", "proxy": f"{base}/proxy/{settings.mlflow.port}/"},
        "services": services,
        "storage_problems": list(memory.storage_problems),
        "events": list(events.entries),
    }


def news(document: dict) -> dict:
    """The status document without what moves with the clock alone: the time it was written,
    uptimes, and which probe answered last, when and how fast. The agent writes the document as
    soon as this part changes and otherwise refreshes it every STATUS_REFRESH seconds (comparing
    the whole document rewrote it at every loop step, 2-3 times a second at idle)."""

    def probe(result: dict | None) -> dict | None:  # news: it failed, or how it failed changed
        return None if result is None else {"ok": result["ok"], "detail": result["detail"]}

    services = {
        name: {**{k: v for k, v in service.items() if k != "uptime_s"}, "last_probe": probe(service.get("last_probe"))}
        for name, service in document["services"].items()
    }
    route = {**document["route"], "last_probe": probe(document["route"].get("last_probe"))}
    return {**{k: v for k, v in document.items() if k != "updated"}, "services": services, "route": route}


def write_atomically(path: Path, document: dict) -> None:
    """Readers see the old document or the new one, never a partial write."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
