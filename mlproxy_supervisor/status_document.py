"""The status document: one typed model, written by the agent (agent/report.py builds it) and read
back through the same model by `mlproxy status`, `mlproxy up`, a restarted agent and benchmarks.

It never holds the token: URLs are given without it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .files import write_atomically

SCHEMA_VERSION = 1
Overall = Literal["starting", "ready", "degraded", "down"]


def iso(wall: float) -> str | None:
    if not wall:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def age(moment: str | None) -> float | None:
    """Seconds since an `iso` timestamp, or None."""
    if not moment:
        return None
    return time.time() - datetime.strptime(moment, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class ProbeReport(_Part):
    kind: str
    ok: bool
    latency_ms: float
    at: str | None = None
    detail: str = ""


class ErrorReport(_Part):
    message: str
    at: str | None = None
    log_tail: list[str] = []


class ServiceReport(_Part):
    phase: str
    state: str = "UNKNOWN"
    pid: int = 0
    uptime_s: float = 0.0
    restarts: int = 0
    stopped_by_operator: bool = False
    restart_pending: bool = False
    last_probe: ProbeReport | None = None
    last_error: ErrorReport | None = None


class RouteReport(_Part):
    ready: bool = False
    last_probe: ProbeReport | None = None
    last_error: str | None = None


class SupervisordReport(_Part):
    available: bool
    pid: int | None = None


class Urls(_Part):
    jupyter: str
    mlflow: str
    proxy: str


class EventEntry(_Part):
    at: str | None
    service: str
    event: str
    detail: str = ""


class Replacement(_Part):
    at: str | None
    process: str  # "agent" or "supervisord"
    pid: int
    cause: str  # watchdog.CAUSES
    detail: str = ""  # how long it was silent


class WatchdogReport(_Part):
    """What `mlproxy up`'s watcher saw and did (watchdog.py writes it; `mlproxy status` adds the
    heartbeat's age when it reads it)."""

    heartbeat_age_s: float | None = None  # None: no heartbeat yet (the agent starting)
    heartbeat_budget_s: float
    replaced: dict[str, int] = {}  # process -> times the watcher replaced it
    recent: list[Replacement] = []  # the latest replacements, oldest first

    def describe(self) -> str:
        """One line for `mlproxy status`."""
        if self.heartbeat_age_s is None:
            parts = ["no agent heartbeat yet"]
        else:
            parts = [f"agent heartbeat {self.heartbeat_age_s:.1f} s ago (replaced after {self.heartbeat_budget_s:g} s)"]
        for process in ("agent", "supervisord"):
            count = self.replaced.get(process, 0)
            last = next((r for r in reversed(self.recent) if r.process == process), None)
            parts.append(f"{process} replaced {count}x" + (f" (last at {last.at}: {last.detail})" if last else ""))
        return "; ".join(parts)


class StatusDocument(_Part):
    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    overall: Overall
    summary: str
    updated: str | None = None
    agent_pid: int | None = None
    supervisord: SupervisordReport | None = None
    route: RouteReport | None = None
    urls: Urls | None = None
    services: dict[str, ServiceReport] = {}
    storage_problems: list[str] = []  # disk nearly full where MLflow writes
    events: list[EventEntry] = []
    watchdog: WatchdogReport | None = None  # added by `mlproxy status`, not written by the agent

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Readers see the old document or the new one, never a partial write."""
        write_atomically(path, self.to_json(), 0o600)

    @classmethod
    def read(cls, path: Path) -> StatusDocument | None:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    @property
    def age(self) -> float | None:
        return age(self.updated)

    def news(self) -> dict:
        """The document without what moves with the clock alone: the time it was written,
        uptimes, and which probe answered last, when and how fast. The agent writes the document
        as soon as this part changes and otherwise refreshes it every few seconds (comparing the
        whole document rewrote it at every loop step, 2-3 times a second at idle)."""

        def probe(result: dict | None) -> dict | None:  # news: it failed, or how it failed changed
            return None if result is None else {"ok": result["ok"], "detail": result["detail"]}

        data = self.model_dump(exclude={"updated"})
        for service in data["services"].values():
            del service["uptime_s"]
            service["last_probe"] = probe(service["last_probe"])
        if data["route"] is not None:
            data["route"]["last_probe"] = probe(data["route"]["last_probe"])
        return data
