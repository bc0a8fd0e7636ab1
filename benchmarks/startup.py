"""Time to READY: `mlproxy up` against the bare ordered limit and the old `sleep 3` recipe.

Each run starts from nothing running, on a fresh state directory (new SQLite database: MLflow
creates its tables) or an existing one (the database of an earlier run of the same variant), and
ends when the route a user takes works: /mlflow/health, an authenticated REST call through
Jupyter, and /proxy/<port>/health, polled from outside every 50 ms.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs, timeline
from .probe import POLL_INTERVAL, mlflow_ready, route_ok, wait_ports_free, wait_until
from .systems import OLD_RECIPE_SLEEP, Bare, Mlproxy, OldRecipe, Ports

TIMEOUT = 240.0  # seconds any variant may take before the run counts as failed
VARIANTS = ("mlproxy", "bare", "old")


def run_mlproxy(state_dir: Path, ports: Ports) -> dict:
    stack = Mlproxy(state_dir, ports)
    wait_ports_free([ports.jupyter, ports.mlflow, ports.metrics])
    load_before = procs.load()
    contention = procs.Contention(lambda: procs.trees([stack.process] if stack.process else []))
    t0, wall0 = stack.start()
    route_at = status_at = None
    token = None
    try:
        deadline = t0 + TIMEOUT
        while (route_at is None or status_at is None) and time.monotonic() < deadline:
            if stack.process.poll() is not None:
                raise RuntimeError(f"mlproxy up exited with {stack.process.returncode}; see {stack.output}")
            if route_at is None:
                token = token or stack.token()
                if route_ok(ports.jupyter, ports.mlflow, token):
                    route_at = time.monotonic()
            if status_at is None and (stack.status() or {}).get("overall") == "ready":
                status_at = time.monotonic()
            time.sleep(POLL_INTERVAL)
        conditions = {"load_before": load_before, **contention.finish()}
        time.sleep(0.3)  # let `up` print its line
    finally:
        stack.stop()
    if route_at is None or status_at is None:
        raise RuntimeError(f"mlproxy not ready within {TIMEOUT:.0f} s; see {state_dir}/logs")
    return {
        "ready_s": round(route_at - t0, 3),
        "status_ready_s": round(status_at - t0, 3),
        **_mlproxy_breakdown(stack, wall0),
        **conditions,
    }


def _mlproxy_breakdown(stack: Mlproxy, wall0: float) -> dict:
    """Where the time went, from the stack's own logs (seconds since `mlproxy up` was exec'd)."""
    logs = stack.settings.log_dir
    agent = timeline.agent_events(logs / "agent.log", wall0)
    supervisord = timeline.supervisord_events(logs / "supervisord.log", wall0)

    def agent_at(service: str, kind: str) -> float | None:
        return timeline.first(agent, lambda e: e[1] == service and e[2] == kind, wall0)

    def spawned(program: str) -> float | None:
        return timeline.first(supervisord, lambda e: e[1].startswith(f"spawned: '{program}'"), wall0)

    matches = re.findall(r"ready in ([\d.]+) s", stack.output_text())
    return {
        "up_says_ready_in_s": float(matches[-1]) if matches else None,
        "breakdown": {
            "supervisord_started": timeline.first(supervisord, lambda e: e[1].startswith("supervisord started"), wall0),
            "agent_spawned": spawned("agent"),
            "mlflow_spawned": spawned("mlflow"),
            "mlflow_ready": agent_at("mlflow", "ready"),
            "jupyter_spawned": spawned("jupyter"),
            "jupyter_ready": agent_at("jupyter", "ready"),
            "route_ready": agent_at("route", "ready"),
            "stack_ready_event": agent_at("route", "stack-ready"),
        },
    }


@dataclass(frozen=True)
class OrderedStart:
    """Monotonic times of a start of MLflow, then Jupyter, by hand."""

    t0: float
    mlflow_at: float | None  # what `between` returned
    jupyter_started: float  # just before Jupyter is spawned
    jupyter_spawned: float  # just after
    route_at: float | None
    conditions: dict


def _start_in_order(system: Bare | OldRecipe, ports: Ports, between) -> OrderedStart:
    """Start MLflow, call `between` (wait for it, or sleep), start Jupyter, poll the route."""
    wait_ports_free([ports.jupyter, ports.mlflow])
    system.prepare()
    load_before, contention = procs.load(), procs.Contention(lambda: procs.trees(system.processes))
    try:
        t0 = time.monotonic()
        system.start_mlflow()
        mlflow_at = between()
        jupyter_started = time.monotonic()
        system.start_jupyter()
        jupyter_spawned = time.monotonic()
        route_at = wait_until(lambda: route_ok(ports.jupyter, ports.mlflow, system.token), TIMEOUT)
        conditions = {"load_before": load_before, **contention.finish()}
    finally:
        system.stop()
    return OrderedStart(t0, mlflow_at, jupyter_started, jupyter_spawned, route_at, conditions)


def run_bare(state_dir: Path, ports: Ports) -> dict:
    bare = Bare(state_dir, ports)

    def mlflow_ready_at() -> float:
        at = wait_until(lambda: mlflow_ready(ports.mlflow, unix_socket=bare.mlflow_socket), TIMEOUT)
        if at is None:
            raise RuntimeError(f"bare MLflow not ready within {TIMEOUT:.0f} s; see {state_dir}/logs")
        return at

    run = _start_in_order(bare, ports, mlflow_ready_at)
    if run.route_at is None:
        raise RuntimeError(f"bare route not ready within {TIMEOUT:.0f} s; see {state_dir}/logs")
    return {
        "ready_s": round(run.route_at - run.t0, 3),
        "mlflow_ready_s": round(run.mlflow_at - run.t0, 3),
        "jupyter_to_route_s": round(run.route_at - run.jupyter_started, 3),
        **run.conditions,
    }


def run_old(directory: Path, ports: Ports) -> dict:
    run = _start_in_order(OldRecipe(directory, ports), ports, lambda: time.sleep(OLD_RECIPE_SLEEP))
    if run.route_at is None:
        raise RuntimeError(f"old recipe's route not working within {TIMEOUT:.0f} s; see {directory}")
    claimed_at = run.jupyter_spawned  # where a script with `sleep 3` carries on
    return {
        "claims_ready_s": round(claimed_at - run.t0, 3),
        "ready_s": round(run.route_at - run.t0, 3),
        "route_fails_after_claim_s": round(run.route_at - claimed_at, 3),
        **run.conditions,
    }


RUNNERS = {"mlproxy": run_mlproxy, "bare": run_bare, "old": run_old}


class Startup:
    """Interleaved rounds: every round runs each variant once, fresh and existing, in a rotated order."""

    def __init__(self, work: Path, ports: dict[str, Ports], log):
        self.work, self.ports, self.log = work, ports, log
        self.samples: dict[str, list[dict]] = {f"{v}_{m}": [] for m in ("fresh", "existing") for v in VARIANTS}
        self.warmup: dict[str, dict] = {}
        self.calibration: list[dict] = []

    def existing_dir(self, variant: str) -> Path:
        return self.work / f"{variant}-existing"

    def warm_up(self) -> None:
        """One throwaway run of each variant: warms the page cache and Python's bytecode caches
        for all of them alike, and creates the database each 'existing' variant starts on."""
        for variant in VARIANTS:
            self.warmup[variant] = self._run(variant, "existing", -1)

    def round(self, index: int) -> None:
        self.calibration.append(procs.calibrate())
        jobs = [(v, m) for m in ("fresh", "existing") for v in VARIANTS]
        shift = index % len(jobs)
        for variant, mode in jobs[shift:] + jobs[:shift]:
            self.samples[f"{variant}_{mode}"].append(self._run(variant, mode, index))

    def _run(self, variant: str, mode: str, index: int) -> dict:
        directory = self.existing_dir(variant) if mode == "existing" else self.work / f"{variant}-fresh-{index}"
        started = time.monotonic()
        sample = RUNNERS[variant](directory, self.ports[variant])
        sample["round"] = index
        if mode == "fresh":
            shutil.rmtree(directory, ignore_errors=True)
            (directory.parent / f"{directory.name}.up.log").unlink(missing_ok=True)
        label = "warm-up" if index < 0 else f"round {index + 1}"
        self.log(f"startup {label}: {variant} {mode}: ready {sample['ready_s']:.2f} s (load {sample['load_before'][0]}, "
                 f"others {sample['others_busy']:.0%} of the CPUs; run took {time.monotonic() - started:.0f} s)")
        return sample
