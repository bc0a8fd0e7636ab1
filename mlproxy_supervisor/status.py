"""`mlproxy status`: the agent's status document, checked for freshness, as a table or JSON.

Exit code: 0 ready, 1 starting or degraded, 2 down (not running counts as down). `--wait` blocks
until ready: what scripts use instead of `sleep 3`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import rpc, watchdog
from .config import Settings
from .exits import EXIT_DOWN, STATUS_EXIT
from .status_document import ProbeReport, StatusDocument, age

STALE_AFTER = 10.0  # seconds; the agent rewrites the document at least every 2 s


def current_status(settings: Settings) -> StatusDocument:
    """The status document, or a synthesized one when the stack or its agent is not reporting,
    with the view of `up`'s watcher (watchdog.py)."""
    if not rpc.answers(settings.socket_path):
        return StatusDocument(overall="down", summary=f"not running (no supervisord on {settings.socket_path})")
    return _agents_status(settings).model_copy(update={"watchdog": watchdog.report(settings)})


def _agents_status(settings: Settings) -> StatusDocument:
    document = StatusDocument.read(settings.status_file)
    document_age = document.age if document else None
    if document is None or document_age is None or document_age > STALE_AFTER:
        summary = "supervisord is running but the agent is not reporting"
        if document_age is not None:
            summary += f" (last report {document_age:.0f} s ago)"
        previous = document or StatusDocument(overall="starting", summary=summary)
        overall = "degraded" if previous.overall in ("ready", "degraded") else "starting"
        return previous.model_copy(update={"overall": overall, "summary": summary})
    return document


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _probe_text(probe: ProbeReport | None) -> str:
    if probe is None:
        return "-"
    outcome = "ok" if probe.ok else "FAILED"
    since = age(probe.at)
    when = f", {_duration(since)} ago" if since is not None else ""
    return f"{probe.kind} {outcome} {probe.latency_ms:.1f} ms{when}"


def distinct_lines(lines: list[str]) -> list[str]:
    """Each distinct log line once, where it last appeared, counted: a program that failed nine
    times the same way shows its cause once, not nine times."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    last = {line: index for index, line in enumerate(lines)}
    ordered = sorted(counts, key=last.__getitem__)
    return [line if counts[line] == 1 else f"{line}  ({counts[line]} times)" for line in ordered]


def start_timings(status: StatusDocument) -> str | None:
    """How long the last start of each service and of the route took, from the agent's events."""
    latest = {}
    for entry in status.events:
        if entry.event == "ready" and " after " in entry.detail:  # not "again, 12 ms" (a recovered probe)
            latest[entry.service] = entry.detail.split(" (")[0]
    return "; ".join(f"{name} ready {detail}" for name, detail in latest.items()) or None


def render_table(status: StatusDocument) -> str:
    lines = [f"mlproxy: {status.overall} - {status.summary}"]
    if status.urls:
        lines.append(f"MLflow: {status.urls.mlflow}  (also {status.urls.proxy})")
    if timings := start_timings(status):
        lines.append(f"Started: {timings}")
    if status.watchdog is not None:
        lines.append(f"Watchdog: {status.watchdog.describe()}")
    if status.services:
        rows = [("SERVICE", "STATE", "PHASE", "PID", "UPTIME", "RESTARTS", "LAST PROBE")]
        for name, service in status.services.items():
            phase = "stopped by operator" if service.stopped_by_operator else service.phase
            rows.append(
                (name, service.state, phase, str(service.pid or "-"), _duration(service.uptime_s),
                 str(service.restarts), _probe_text(service.last_probe))
            )  # fmt: skip
        route = status.route
        route_ready = route is not None and route.ready
        rows.append(("route", "-", "ready" if route_ready else "not ready", "-", "-", "-", _probe_text(route.last_probe if route else None)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines.append("")
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
        shown: set[str] = set()
        for name, service in status.services.items():
            error = service.last_error
            if error and service.phase != "ready" and error.message not in shown:
                shown.add(error.message)
                lines.append(f"\n{name}: {error.message} ({error.at})")
                lines += [f"    | {line}" for line in distinct_lines(error.log_tail)[-8:]]
        if route is not None and route.last_error and not route.ready:
            lines.append(f"\nroute: {route.last_error}")
    return "\n".join(lines)


def run(locate: Callable[[], Settings], as_json: bool, wait: bool, timeout: float) -> int:
    """`locate` finds the stack (running.locate_stack); while waiting it is asked again until a
    running stack is found, since `mlproxy up` records its stack only once supervisord runs."""
    settings = locate()
    status = current_status(settings)
    if wait:
        deadline = time.monotonic() + timeout
        while status.overall != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
            if settings.resolved_from is None:
                settings = locate()
            status = current_status(settings)
    print(status.to_json().rstrip() if as_json else render_table(status))
    return STATUS_EXIT.get(status.overall, EXIT_DOWN)
