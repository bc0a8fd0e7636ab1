"""When things happened inside a stack, from its own logs: the agent's event log (UTC, ms) and
supervisord's log (local time, ms). Used to say where the seconds go, not for the headline numbers,
which are always measured from outside."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

_AGENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\S+) (\S+?)(?::\s(.*))?$")
_SUPERVISORD_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ (.*)$")


def agent_events(log: Path, since: float) -> list[tuple[float, str, str, str]]:
    """(wall time, service, event, detail) for every agent event at or after `since` (wall)."""
    events = []
    for line in _lines(log):
        match = _AGENT_LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        if at >= since - 0.002:  # the agent truncates to whole milliseconds
            events.append((at, match[2], match[3], match[4] or ""))
    return events


def supervisord_events(log: Path, since: float) -> list[tuple[float, str]]:
    """(wall time, message) for supervisord log lines at or after `since` (wall)."""
    events = []
    for line in _lines(log):
        match = _SUPERVISORD_LINE.match(line)
        if not match:
            continue
        at = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
        if at >= since - 0.002:
            events.append((at, match[3]))
    return events


def first(events, predicate, t0: float) -> float | None:
    """Seconds from t0 (wall) to the first event matching predicate, or None."""
    for event in events:
        if predicate(event):
            return round(event[0] - t0, 3)
    return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []
