"""Time to READY: `mlproxy up` against the bare ordered limit and the old `sleep 3` recipe.

Each run starts from nothing running, on a fresh state directory (new SQLite database: MLflow
creates its tables) or an existing one (the database of an earlier run of the same variant), and
ends when the route a user takes works: /mlflow/health, an authenticated REST call through
Jupyter, and /proxy/<port>/health, polled from outside every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

from . import procs, timeline
from .probe import POLL_INTERVAL, mlflow_ready, route_ok, wait_ports_free, wait_until
from .report import _fmt, rewrite_between, run_identity, save_results, stats
from .systems import OLD_RECIPE_SLEEP, Bare, Mlproxy, OldRecipe, Ports

TIMEOUT = 240.0  # seconds any variant may take before the run counts as failed
VARIANTS = ("mlproxy", "bare", "old")


def run_mlproxy(state_dir: Path, ports: Ports, start_order: str | None = None) -> dict:
    stack = Mlproxy(state_dir, ports, {"MLPROXY_AGENT__START_ORDER": start_order} if start_order else None)
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
            "mlflow_admitted": agent_at("mlflow", "admitted"),
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


# --- python -m benchmarks.startup: parallel against ordered, quiet and loaded ---------------------

ORDER_LABELS = {
    "parallel": 'mlproxy, start_order = "parallel"',
    "ordered": "mlproxy, ordered start (default)",
    "bare": "bare sequential limit (by hand: MLflow, then Jupyter)",
    "bare-parallel": "bare parallel limit (by hand: both at once)",
}
ORDER_VARIANTS = tuple(ORDER_LABELS)
STATES = ("fresh", "existing")
CONDITIONS = ("quiet", "hogs")
HOGS = 2  # busy CPU loops, one per core of the machine this was written for
TARGET_OF_SEQUENTIAL = 0.75  # READY at most this share of the bare sequential limit
WORTH_IT = 0.80  # parallel the default only if at least 20 % faster than ordered, quiet and loaded
IMPORTS = {"MLflow's app": "import mlflow.server.fastapi_app", "Jupyter (notebook.app)": "import notebook.app",
           "the agent": "import mlproxy_supervisor.agent.loop"}  # fmt: skip


def run_bare_parallel(state_dir: Path, ports: Ports) -> dict:
    """Both servers by hand at once, route polled: the fastest a parallel start can be."""
    run = _start_in_order(Bare(state_dir, ports), ports, lambda: None)
    if run.route_at is None:
        raise RuntimeError(f"bare parallel route not ready within {TIMEOUT:.0f} s; see {state_dir}/logs")
    return {"ready_s": round(run.route_at - run.t0, 3), **run.conditions}


ORDER_RUNNERS = {
    "parallel": lambda directory, ports: run_mlproxy(directory, ports, "parallel"),
    "ordered": lambda directory, ports: run_mlproxy(directory, ports, "ordered"),
    "bare": run_bare,
    "bare-parallel": run_bare_parallel,
}


class CpuHogs:
    """`count` processes spinning on a CPU each, for a loaded machine (the issue's "two busy hogs")."""

    def __init__(self, count: int):
        self.count, self.processes = count, []

    def __enter__(self) -> CpuHogs:
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def import_seconds(statement: str, runs: int) -> dict:
    """Median wall time of a fresh interpreter that runs `statement` (bytecode cached, page cache warm)."""
    times = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
        times.append(time.monotonic() - began)
    return stats(times)


def measure(work: Path, runs: int, log) -> dict:
    ports = {variant: Ports(free_port(), free_port(), free_port()) for variant in ORDER_VARIANTS}
    samples = {c: {s: {v: [] for v in ORDER_VARIANTS} for s in STATES} for c in CONDITIONS}
    imports = {}

    def one(condition: str, variant: str, state: str, index: int) -> None:
        directory = work / f"{variant}-existing" if state == "existing" else work / f"{variant}-fresh-{condition}-{index}"
        sample = ORDER_RUNNERS[variant](directory, ports[variant])
        sample["round"] = index
        if state == "fresh":
            shutil.rmtree(directory, ignore_errors=True)
            (directory.parent / f"{directory.name}.up.log").unlink(missing_ok=True)
        if index >= 0:
            samples[condition][state][variant].append(sample)
        label = "warm-up" if index < 0 else f"round {index + 1}"
        log(f"startup {condition} {label}: {variant} {state}: ready {sample['ready_s']:.2f} s (others {sample['others_busy']:.0%} of the CPUs)")

    for variant in ORDER_VARIANTS:  # page cache, bytecode, and the existing state directories
        one("quiet", variant, "existing", -1)
    jobs = [(v, s) for s in STATES for v in ORDER_VARIANTS]
    for condition in CONDITIONS:
        with CpuHogs(HOGS if condition == "hogs" else 0):
            imports[condition] = {what: import_seconds(statement, runs) for what, statement in IMPORTS.items()}
            for index in range(runs):
                shift = index % len(jobs)
                for variant, state in jobs[shift:] + jobs[:shift]:
                    one(condition, variant, state, index)
    return {"samples": samples, "imports": imports}


def summarize_order(measured: dict) -> dict:
    summary = {}
    for condition in CONDITIONS:
        for state in STATES:
            runs = measured["samples"][condition][state]
            ready = {v: stats(s["ready_s"] for s in runs[v]) for v in ORDER_VARIANTS}
            median = {v: ready[v].get("median") for v in ORDER_VARIANTS}
            steps = {}
            for variant in ("parallel", "ordered"):
                keys = runs[variant][0]["breakdown"] if runs[variant] else {}
                steps[variant] = {key: stats(s["breakdown"][key] for s in runs[variant]) for key in keys}
                steps[variant]["status_ready"] = stats(s["status_ready_s"] for s in runs[variant])
            summary[f"{condition}_{state}"] = {
                "ready": ready,
                "parallel_of_sequential": round(median["parallel"] / median["bare"], 3),
                "parallel_of_ordered": round(median["parallel"] / median["ordered"], 3),
                "ordered_of_sequential": round(median["ordered"] / median["bare"], 3),
                "parallel_limit_of_sequential": round(median["bare-parallel"] / median["bare"], 3),
                "meets_target": median["parallel"] <= TARGET_OF_SEQUENTIAL * median["bare"],
                "worth_it": median["parallel"] <= WORTH_IT * median["ordered"],
                "steps": steps,
            }
    return summary


STEP_LABELS = (
    ("supervisord_started", "supervisord started"),
    ("mlflow_spawned", "MLflow spawned"),
    ("jupyter_spawned", "Jupyter spawned"),
    ("jupyter_ready", "agent: Jupyter ready"),
    ("mlflow_ready", "agent: MLflow ready (requests let through)"),
    ("route_ready", "agent: the route works"),
    ("status_ready", "`mlproxy status` says ready"),
)


def order_markdown(results: dict) -> str:
    summary, meta = results["summary"], results["conditions"]
    lines = [
        f"Measured {meta['date']} at commit {meta['commit']} on {meta['machine']} (`{meta['command']}`); "
        f"medians of {meta['runs']} starts each, variants interleaved, seconds from the exec of `mlproxy up` "
        "(or of the first server) until the route a user takes works, polled from outside every 50 ms. "
        f"\"hogs\": {HOGS} processes spinning on a CPU each for the whole condition.",
        "",
        "| condition, state | parallel | ordered (default) | bare sequential limit | bare parallel limit | parallel ÷ sequential | parallel ÷ ordered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in summary.items():
        cell = lambda v, ready=row["ready"]: _fmt(ready[v])  # noqa: E731
        target = "meets ≤ 0.75" if row["meets_target"] else "**misses ≤ 0.75**"
        worth = "" if row["worth_it"] else " (**under 20 % faster**)"
        lines.append(f"| {key.replace('_', ', ')} | {cell('parallel')} | {cell('ordered')} | {cell('bare')} | {cell('bare-parallel')} | "
                     f"{row['parallel_of_sequential']:.2f} ({target}) | {row['parallel_of_ordered']:.2f}{worth} |")  # fmt: skip
    lines += ["", "Where the time goes (medians, seconds after the exec of `mlproxy up`):", "",
              "| step | " + " | ".join(f"{o}, {k.replace('_', ' ')}" for k in summary for o in ("parallel", "ordered")) + " |",
              "|---|" + "---:|" * (2 * len(summary))]  # fmt: skip
    for key, label in STEP_LABELS:
        cells = []
        for row in summary.values():
            for order in ("parallel", "ordered"):
                value = row["steps"][order].get(key, {}).get("median")
                cells.append("" if value is None else f"{value:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Import time of a fresh interpreter (median, bytecode cached): " + "; ".join(
        f"{condition}: " + ", ".join(f"{what} {s['median']:.2f} s" for what, s in imports.items())
        for condition, imports in results["imports"].items()) + "."]  # fmt: skip
    return "\n".join(lines)


def plot_timeline(results: dict, path: Path) -> None:
    """One start of each order (quiet, existing state; the medians of its steps) as bars per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(STATES), 1, figsize=(10, 5.4), sharex=True)
    for axis, state in zip(axes, STATES, strict=True):
        row = results["summary"][f"quiet_{state}"]
        labels = []
        for y, order in enumerate(("ordered", "parallel")):
            step = {key: value.get("median") for key, value in row["steps"][order].items()}
            axis.barh(y, step["supervisord_started"], 0.7, color="lightgray", label="`mlproxy up` until supervisord runs" if y == 0 else None)
            for offset, (server, begin, end, color) in enumerate((("MLflow", "mlflow_spawned", "mlflow_ready", "tab:blue"),
                                                                 ("Jupyter", "jupyter_spawned", "jupyter_ready", "tab:orange"))):  # fmt: skip
                if step.get(begin) is not None and step.get(end) is not None:
                    axis.barh(y + (offset - 0.5) * 0.35, step[end] - step[begin], 0.33, left=step[begin], color=color,
                              label=f"{server}: spawned → ready" if y == 0 else None)  # fmt: skip
            axis.plot([step["status_ready"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2, label="READY" if y == 0 else None)
            labels.append(f"{order}: READY {step['status_ready']:.1f} s")
        bare = row["ready"]["bare"]["median"]
        axis.axvline(bare, color="gray", linestyle="--", label="bare sequential limit")
        axis.set_yticks([0, 1], labels)
        axis.set_title(f"{state} state directory", fontsize=10)
        axis.set_xlim(left=0)
    axes[-1].set_xlabel("seconds after `mlproxy up` (medians, quiet machine)")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)  # below: bars fill the axes
    figure.suptitle("Where a start's time goes: ordered against parallel" + (" (smoke run)" if results["conditions"]["smoke"] else ""))
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    """Parallel against ordered start, fresh and existing state, quiet and with CPU hogs."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=int, default=None, help="starts of each variant per state and condition (default 7)")
    parser.add_argument("--smoke", action="store_true", help="1 run; writes results/quick.startup.*, leaves the docs alone")
    args = parser.parse_args()
    runs = args.runs or (1 if args.smoke else 7)
    root = Path(__file__).resolve().parent.parent

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    began, load_before = time.monotonic(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="mlproxy-startup-bench-", dir="/var/tmp") as scratch:
        measured = measure(Path(scratch), runs, log)
    command = "python -m benchmarks.startup" + (" --smoke" if args.smoke else f" --runs {runs}")
    results = {
        "conditions": {**run_identity(), "command": command, "runs": runs, "smoke": args.smoke, "load_before": load_before,
                       "minutes": round((time.monotonic() - began) / 60, 1)},  # fmt: skip
        **measured,
    }
    results["summary"] = summarize_order(results)
    stem = "quick.startup" if args.smoke else "startup"
    table = order_markdown(results)
    out = root / "benchmarks" / "results"
    save_results(out, stem, results, table)
    figure = out / "quick.startup-timeline.png" if args.smoke else root / "docs" / "images" / "startup-timeline.png"
    plot_timeline(results, figure)
    if not args.smoke:
        rewrite_between(root / "docs" / "how-it-works.md", "<!-- startup-bench:begin -->", "<!-- startup-bench:end -->", table)
    log(f"done in {results['conditions']['minutes']} min: {out / stem}.md, {figure}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
