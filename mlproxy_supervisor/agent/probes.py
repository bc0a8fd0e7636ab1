"""HTTP probes: what "alive" and "ready" mean for each service, and for the route users take.

Each probe opens a fresh connection (no keep-alive pool, so uvicorn's delayed-ACK penalty on
reused sockets never applies) and is bounded by its timeout.
"""

from __future__ import annotations

import http.client
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import local_http, procfs
from ..programs import (
    MLFLOW_ARTIFACTS_READINESS,
    MLFLOW_LIVENESS,
    MLFLOW_READINESS,
    SERVICE_LIVENESS,
    SERVICE_READINESS,
)
from .reconcile import ROUTE, Activity, ProbeRequest, ProbeResult, Space

if TYPE_CHECKING:  # annotations only
    from ..config import Settings

USER_AGENT = "mlproxy-agent"


@dataclass(frozen=True)
class Check:
    """One HTTP GET and what its answer must look like."""

    url: str
    authenticated: bool = False
    expect_body: bytes | None = None  # a prefix the body must start with
    unix_socket: str | None = None  # connect here instead of the URL's host:port
    as_agent: bool = False  # team mode: name the agent to MLflow's auth app (hub/caller.py)


def checks(settings: Settings) -> dict[tuple[str, str], list[Check]]:
    mlflow, unix_socket = settings.mlflow_url, settings.mlflow_socket and str(settings.mlflow_socket)
    # Team mode: MLflow's auth app wants to know who asks; on its socket, the stack itself (admin).
    who = settings.team_mode
    found = {
        ("mlflow", "liveness"): [Check(f"{mlflow}{MLFLOW_LIVENESS}", expect_body=b"OK", unix_socket=unix_socket)],
        # Readiness touches the store: the process answering is not enough.
        ("mlflow", "readiness"): [
            Check(f"{mlflow}{MLFLOW_READINESS}", expect_body=b"{", unix_socket=unix_socket, as_agent=who),
            Check(f"{mlflow}{MLFLOW_ARTIFACTS_READINESS}", expect_body=b"{", unix_socket=unix_socket, as_agent=who),
        ],
    }
    if settings.team_mode:
        service, public = settings.service_url.rstrip("/"), settings.team_url.rstrip("/")
        found |= {
            ("service", "liveness"): [Check(f"{service}{SERVICE_LIVENESS}", expect_body=b"OK")],
            ("service", "readiness"): [Check(f"{service}{SERVICE_READINESS}", expect_body=b"OK")],
            # The way users come: through the Hub's proxy, logged in with the service's own Hub token.
            (ROUTE, "readiness"): [
                Check(f"{public}{MLFLOW_LIVENESS}", authenticated=True, expect_body=b"OK"),
                Check(f"{public}{MLFLOW_READINESS}", authenticated=True, expect_body=b"{"),
            ],
        }
        return found
    jupyter = settings.jupyter_local_url
    port = settings.mlflow.port
    return found | {
        ("jupyter", "liveness"): [Check(f"{jupyter}/api", expect_body=b"{")],
        # Authenticated: proves the token Jupyter loaded is the one users and the agent hold.
        ("jupyter", "readiness"): [Check(f"{jupyter}/api/status", authenticated=True, expect_body=b"{")],
        (ROUTE, "readiness"): [
            Check(f"{jupyter}/mlflow{MLFLOW_LIVENESS}", authenticated=True, expect_body=b"OK"),
            Check(f"{jupyter}/mlflow{MLFLOW_READINESS}", authenticated=True, expect_body=b"{"),
            Check(f"{jupyter}/proxy/{port}{MLFLOW_LIVENESS}", authenticated=True, expect_body=b"OK"),
        ],
    }


def _get(check: Check, token: str, timeout: float, agent: dict[str, str]) -> tuple[bool, str | None]:
    """(whether the server answered at all, None when the check passes else what went wrong,
    never containing the token)."""
    path = urlsplit(check.url).path
    headers = {"User-Agent": USER_AGENT, "Connection": "close", **(agent if check.as_agent else {})}
    if check.authenticated:
        headers["Authorization"] = f"token {token}"
    try:
        status, body = local_http.fetch(check.url, timeout, check.unix_socket, headers=headers)
    except TimeoutError:
        return False, f"GET {path}: no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as error:
        return False, f"GET {path}: {getattr(error, 'strerror', None) or error}"
    if status != 200:
        snippet = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
        return True, f"GET {path}: HTTP {status} {snippet}".rstrip()
    if check.expect_body is not None and not body.startswith(check.expect_body):
        return True, f"GET {path}: unexpected body {body[:60]!r}"
    return True, None


class Prober:
    """Runs probes in the background: a probe that waits for its timeout on a hung service must
    not stall the loop, nor delay the other probes."""

    def __init__(self, settings: Settings, token_source, agent_headers=dict):
        self._checks = checks(settings)
        self._token_source = token_source  # callable: re-read, so a rotated token is picked up
        self._agent_headers = agent_headers  # callable: the headers that name the agent to MLflow
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="probe")
        self._in_flight: dict[tuple[str, str], Future] = {}

    def run(self, request: ProbeRequest) -> ProbeResult:
        started, wall = time.monotonic(), time.time()
        checks = self._checks[(request.target, request.kind)]
        token = self._token_source() if any(check.authenticated for check in checks) else ""
        agent = self._agent_headers() if any(check.as_agent for check in checks) else {}
        answered, problem = False, None
        for check in checks:
            answered, problem = _get(check, token, request.timeout, agent)
            if problem:
                break
        return ProbeResult(
            request.target, request.kind, problem is None, time.monotonic() - started, wall, problem or "", request.pid, started, answered
        )

    def submit(self, requests: list[ProbeRequest]) -> None:
        """Start the probes not already running (one per target and kind at a time)."""
        for request in requests:
            key = (request.target, request.kind)
            if key not in self._in_flight:
                self._in_flight[key] = self._pool.submit(self.run, request)

    def collect(self) -> tuple[ProbeResult, ...]:
        done = [key for key, future in self._in_flight.items() if future.done()]
        return tuple(self._in_flight.pop(key).result() for key in done)

    def wait(self, timeout: float, wake_on_success: bool = True) -> None:
        """Sleep until a probe finishes or the timeout passes, whichever comes first.

        With wake_on_success False (a settled stack), only a failed probe ends the sleep early:
        a success changes nothing that cannot wait for the next tick, and waking for each of
        the five probes that come due together every period was most of the agent's idle CPU.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            pending = [future for future in self._in_flight.values() if not future.done()]
            if not pending:
                time.sleep(remaining)
                return
            finished, _ = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            if wake_on_success or any(future.exception() or not future.result().ok for future in finished):
                return


def process_activity(pid: int) -> Activity | None:
    """CPU time and stopped state of the process group `pid` leads (supervisord makes each
    program a group leader; the group includes e.g. `mlflow db upgrade` run by the launcher)."""
    members = [info for member in procfs.group_members(pid) if (info := procfs.stat(member)) is not None]
    if not members:
        return None
    return Activity(pid, sum(info.cpu_ticks for info in members), all(info.frozen for info in members))


def store_locations(settings: Settings) -> list[tuple[str, str]]:
    """(what, directory) of the local places MLflow writes to."""
    return [(store.what, str(store.path)) for store in settings.local_stores]


def free_space(locations: list[tuple[str, str]]) -> tuple[Space, ...]:
    spaces = []
    for what, path in locations:
        try:
            stats = os.statvfs(path)
        except OSError:
            continue  # not created yet: MLflow creates it
        spaces.append(Space(what, path, stats.f_bavail * stats.f_frsize))
    return tuple(spaces)
