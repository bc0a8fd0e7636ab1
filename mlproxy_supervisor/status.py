"""`mlproxy status`: the agent's status document, checked for freshness, as a table or JSON.

Exit code: 0 ready, 1 starting or degraded, 2 down (not running counts as down). `--wait` blocks
until ready: what scripts use instead of `sleep 3`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from .agent import report
from .config import Settings
from .rpc import Supervisor, SupervisorUnavailable

EXIT_CODES = {"ready": 0, "starting": 1, "degraded": 1, "down": 2}
STALE_AFTER = 10.0  # seconds; the agent rewrites the document at least every 2 s


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return time.time() - moment.timestamp()


def current_status(settings: Settings) -> dict:
    """The status document, or a synthesized one when the stack or its agent is not reporting."""
    try:
        supervisor_state = Supervisor(settings.socket_path, timeout=2).state()
    except SupervisorUnavailable:
        supervisor_state = None
    document = report.read_status(settings.status_file)
    if supervisor_state is None:
        return {"overall": "down", "summary": "not running (no supervisord on " + str(settings.socket_path) + ")", "services": {}}
    age = _age(document.get("updated")) if document else None
    if document is None or age is None or age > STALE_AFTER:
        summary = "supervisord is running but the agent is not reporting"
        if age is not None:
            summary += f" (last report {age:.0f} s ago)"
        previous = document or {"services": {}}
        overall = "degraded" if previous.get("overall") in ("ready", "degraded") else "starting"
        return {**previous, "overall": overall, "summary": summary}
    return document


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _probe_text(probe: dict | None) -> str:
    if not probe:
        return "-"
    outcome = "ok" if probe["ok"] else "FAILED"
    age = _age(probe.get("at"))
    when = f", {_duration(age)} ago" if age is not None else ""
    return f"{probe['kind']} {outcome} {probe['latency_ms']:.1f} ms{when}"


def render_table(status: dict) -> str:
    lines = [f"mlproxy: {status['overall']} - {status.get('summary', '')}"]
    if status.get("urls"):
        lines.append(f"MLflow: {status['urls']['mlflow']}  (also {status['urls']['proxy']})")
    services = status.get("services") or {}
    if services:
        rows = [("SERVICE", "STATE", "PHASE", "PID", "UPTIME", "RESTARTS", "LAST PROBE")]
        for name, service in services.items():
            phase = "stopped by operator" if service.get("stopped_by_operator") else service["phase"]
            rows.append(
                (name, service["state"], phase, str(service["pid"] or "-"), _duration(service["uptime_s"]),
                 str(service["restarts"]), _probe_text(service.get("last_probe")))
            )
        route = status.get("route") or {}
        rows.append(("route", "-", "ready" if route.get("ready") else "not ready", "-", "-", "-", _probe_text(route.get("last_probe"))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines.append("")
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
        for name, service in services.items():
            error = service.get("last_error")
            if error and (service["phase"] != "ready"):
                lines.append(f"\n{name}: {error['message']} ({error.get('at')})")
                lines += [f"    | {line}" for line in error.get("log_tail", [])[-8:]]
        if route.get("last_error") and not route.get("ready"):
            lines.append(f"\nroute: {route['last_error']}")
    return "\n".join(lines)


def run(settings: Settings, as_json: bool, wait: bool, timeout: float) -> int:
    status = current_status(settings)
    if wait:
        deadline = time.monotonic() + timeout
        while status["overall"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = current_status(settings)
    print(json.dumps(status, indent=2) if as_json else render_table(status))
    return EXIT_CODES.get(status["overall"], 2)
