"""Recovery: MTTR after kill -9 of MLflow, and detection plus restart of a hung (SIGSTOPped) MLflow.

Both run on one READY stack. Before each fault MLflow must have been RUNNING (alive past
supervisord's startsecs) and the stack READY, so every fault meets the same, settled state.
MLflow's own warm start (mlproxy's argv and environment, started bare on an existing database)
is measured between the faults, interleaved, as the MTTR baseline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from . import procs, timeline
from .probe import POLL_INTERVAL, mlflow_ready, route_ok, wait_until
from .systems import Mlproxy

MLFLOW_STARTSECS = 8.0  # supervisord.conf.d/mlflow.conf: a kill before this is a start-up failure
TIMEOUT = 120.0


def wait_settled(stack: Mlproxy, token: str, timeout: float = TIMEOUT) -> int:
    """Wait until MLflow is RUNNING past startsecs and the stack is READY; returns MLflow's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = stack.supervisor().processes()["mlflow"]
        status = stack.status() or {}
        if (
            info.state == "RUNNING"
            and info.now - info.start > MLFLOW_STARTSECS + 0.5
            and status.get("overall") == "ready"
            and status["services"]["mlflow"]["pid"] == info.pid
            and route_ok(stack.ports.jupyter, stack.ports.mlflow, token)
        ):
            return info.pid
        time.sleep(0.2)
    raise RuntimeError(f"stack did not settle within {timeout:.0f} s; see {stack.settings.log_dir}")


def _status_ready_with_new_pid(stack: Mlproxy, old_pid: int) -> bool:
    status = stack.status() or {}
    return status.get("overall") == "ready" and status.get("services", {}).get("mlflow", {}).get("pid") not in (0, old_pid, None)


def _recover(stack: Mlproxy, token: str, old_pid: int, t0: float) -> dict:
    """Poll from outside until the route works and the status says ready again (new MLflow pid)."""
    route_at = status_at = None
    deadline = t0 + TIMEOUT
    while (route_at is None or status_at is None) and time.monotonic() < deadline:
        if route_at is None and route_ok(stack.ports.jupyter, stack.ports.mlflow, token, timeout=1.0):
            route_at = time.monotonic()
        if status_at is None and _status_ready_with_new_pid(stack, old_pid):
            status_at = time.monotonic()
        time.sleep(POLL_INTERVAL)
    if route_at is None or status_at is None:
        raise RuntimeError(f"no recovery within {TIMEOUT:.0f} s; see {stack.settings.log_dir}")
    return {"route_s": round(route_at - t0, 3), "status_ready_s": round(status_at - t0, 3)}


def _events(stack: Mlproxy, wall0: float) -> dict:
    logs = stack.settings.log_dir
    agent = timeline.agent_events(logs / "agent.log", wall0)
    supervisord = timeline.supervisord_events(logs / "supervisord.log", wall0)
    return {
        "supervisord_saw_exit": timeline.first(supervisord, lambda e: e[1].startswith("exited: mlflow"), wall0),
        "agent_restart_event": timeline.first(agent, lambda e: e[1] == "mlflow" and e[2] == "restart", wall0),
        "mlflow_spawned": timeline.first(supervisord, lambda e: e[1].startswith("spawned: 'mlflow'"), wall0),
        "agent_saw_new_pid": timeline.first(agent, lambda e: e[1] == "mlflow" and e[2] == "process", wall0),
        "agent_mlflow_ready": timeline.first(agent, lambda e: e[1] == "mlflow" and e[2] == "ready", wall0),
        "agent_route_ready": timeline.first(agent, lambda e: e[1] == "route" and e[2] == "ready", wall0),
    }


def kill9(stack: Mlproxy, token: str) -> dict:
    pid = wait_settled(stack, token)
    load_before, contention = procs.load(), procs.Contention(lambda: procs.descendants(stack.process.pid))
    t0, wall0 = time.monotonic(), time.time()
    os.kill(pid, signal.SIGKILL)
    result = _recover(stack, token, pid, t0)
    return {**result, "events": _events(stack, wall0), "load_before": load_before, **contention.finish()}


def hang(stack: Mlproxy, token: str) -> dict:
    pid = wait_settled(stack, token)
    load_before, contention = procs.load(), procs.Contention(lambda: procs.descendants(stack.process.pid))
    t0, wall0 = time.monotonic(), time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        # A stopped process cannot answer, so the first answer comes from its replacement.
        answered = wait_until(lambda: mlflow_ready(stack.ports.mlflow, timeout=0.5, unix_socket=stack.mlflow_socket), TIMEOUT)
        if answered is None:
            raise RuntimeError(f"hung MLflow not replaced within {TIMEOUT:.0f} s; see {stack.settings.log_dir}")
        result = _recover(stack, token, pid, t0)
        conditions = {"load_before": load_before, **contention.finish()}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # only matters if the agent never acted
    events = _events(stack, wall0)
    return {
        "detected_s": events["agent_restart_event"],
        "restarted_s": events["mlflow_spawned"],
        "new_mlflow_ready_s": round(answered - t0, 3),
        **result,
        "events": events,
        **conditions,
    }


def warm_start(server, memory_after: float = 3.0) -> dict:
    """MLflow alone on an existing database, until ready; then its memory (PSS), `memory_after`
    seconds later. ``server`` is a Bare (mlproxy's argv and environment) or an `mlflow server`."""
    server.prepare()
    load_before = procs.load()

    contention = procs.Contention(lambda: procs.trees(server.processes))
    try:
        t0 = time.monotonic()
        server.start_mlflow()
        ready = wait_until(lambda: mlflow_ready(server.ports.mlflow, unix_socket=server.mlflow_socket), TIMEOUT)
        conditions = {"load_before": load_before, **contention.finish()}
        if ready is not None:
            time.sleep(memory_after)
            conditions["memory"] = procs.memory(procs.trees(server.processes)).as_dict()
    finally:
        server.stop()
    if ready is None:
        raise RuntimeError(f"MLflow ({type(server).__name__}) not ready within {TIMEOUT:.0f} s")
    return {"ready_s": round(ready - t0, 3), **conditions}


def liveness_budget(stack: Mlproxy) -> dict:
    liveness = stack.settings.agent.liveness
    return {
        "period_s": liveness.period,
        "failure_threshold": liveness.failure_threshold,
        "timeout_s": liveness.timeout,
        "budget_s": liveness.period * liveness.failure_threshold + liveness.timeout,
    }
