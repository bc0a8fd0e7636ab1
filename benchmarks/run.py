"""Run the benchmarks and write benchmarks/results/latest.{json,md} (or quick.* with --quick).

    python -m benchmarks.run            # full suite, about 15 min on 2 cores
    python -m benchmarks.run --quick    # smoke run, fewer repetitions, about 6 min

Run it from the repository root in the environment mlproxy is installed in, on a machine where
nothing else runs if the numbers are to be quoted. It uses ports 61xxx-63xxx (--port-offset
shifts them) and a temporary directory, and leaves no process behind.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from . import idle, procs, recovery, report
from .probe import wait_until
from .startup import Startup
from .systems import Bare, Mlproxy, OldRecipe, Ports, mlflow_cli_like_mlproxy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_START, DOCS_END = "<!-- results:start -->", "<!-- results:end -->"
PACKAGES = ("mlflow", "notebook", "jupyter_server", "jupyter-server-proxy", "supervisor", "uvicorn")
PHASES = ("startup", "recovery", "idle")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], check=False, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "mlproxy_supervisor", "benchmarks/*.py")
    return commit + ("+dirty" if dirty else "")


def ports(offset: int) -> dict[str, Ports]:
    return {
        "mlproxy": Ports(61888 + offset, 61001 + offset, 61181 + offset),
        "bare": Ports(62888 + offset, 62001 + offset),
        "old": Ports(63888 + offset, 63001 + offset),
    }


def run_startup(work: Path, all_ports: dict[str, Ports], reps: int) -> dict:
    startup = Startup(work, all_ports, log)
    startup.warm_up()
    for index in range(reps):
        startup.round(index)
    return {"warmup": startup.warmup, "samples": startup.samples, "calibration_per_round": startup.calibration}


def run_recovery(work: Path, all_ports: dict[str, Ports], reps: int, settle: float, window: float, with_idle: bool) -> tuple[dict, dict]:
    """One READY stack: idle first (untouched), then kill -9 and hang, each `reps` times; MLflow's
    warm start (the MTTR baseline) is measured between the kills."""
    stack = Mlproxy(work / "mlproxy-existing", all_ports["mlproxy"])
    bare = Bare(work / "bare-existing", all_ports["bare"])
    cli = mlflow_cli_like_mlproxy(work / "cli-existing", all_ports["old"])
    recovery.warm_start(bare)  # throwaway: creates its database if the start-up phase did not
    recovery.warm_start(cli)  # throwaway, likewise
    results: dict = {"liveness": recovery.liveness_budget(stack), "kill9": [], "warm_start": [], "cli_warm_start": [], "hang": []}
    idle_result = {}
    stack.start()
    try:
        if wait_until(lambda: (stack.status() or {}).get("overall") == "ready", 240, interval=0.2) is None:
            raise RuntimeError(f"stack not ready; see {stack.settings.log_dir}")
        token = stack.token()
        if with_idle:
            log(f"idle: stack READY; leaving it alone {settle:.0f} s, then watching {window:.0f} s")
            idle_result = idle.stack_idle(stack, settle, window)
            log(f"idle: agent {idle_result['agent']['cpu_percent_of_core']:.2f} % CPU, RSS {max(idle_result['agent_rss_mb_samples']):.1f} MB; "
                f"stack PSS {idle_result['stack']['memory_median']['pss_mb']:.0f} MB")
        for index in range(reps):
            sample = recovery.kill9(stack, token)
            results["kill9"].append(sample)
            warm = recovery.warm_start(bare)
            results["warm_start"].append(warm)
            cli_warm = recovery.warm_start(cli)
            results["cli_warm_start"].append(cli_warm)
            log(f"recovery {index + 1}/{reps}: kill -9 -> route {sample['route_s']:.2f} s, status {sample['status_ready_s']:.2f} s; "
                f"warm start {warm['ready_s']:.2f} s, `mlflow server` {cli_warm['ready_s']:.2f} s (others {sample['others_busy']:.0%})")
        for index in range(reps):
            sample = recovery.hang(stack, token)
            results["hang"].append(sample)
            log(f"hang {index + 1}/{reps}: detected {sample['detected_s']} s, restarted {sample['restarted_s']} s, "
                f"new MLflow ready {sample['new_mlflow_ready_s']:.2f} s (others {sample['others_busy']:.0%})")
    finally:
        stack.stop()
    return results, idle_result


def update_docs(table: str) -> bool:
    if not DOCS.exists():
        return False
    text = DOCS.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        return False
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    DOCS.write_text(f"{head}{DOCS_START}\n{table}{DOCS_END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repetitions, shorter idle windows; writes results/quick.*")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (default 5, quick 2)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases ({', '.join(PHASES)})")
    parser.add_argument("--port-offset", type=int, default=0, help="shift every port (default 0: 61xxx-63xxx)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    parser.add_argument("--no-docs", action="store_true", help="do not update the results section of docs/benchmarks.md")
    parser.add_argument("--report-only", type=Path, metavar="JSON", help="only re-render the tables from a results file")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        results["summary"] = report.summarize(results)
        table = report.markdown(results, results["summary"])
        args.report_only.write_text(json.dumps(results, indent=1) + "\n")
        args.report_only.with_suffix(".md").write_text(table)
        print(table)
        return 0
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    reps = args.reps or (2 if args.quick else 5)
    settle, window = (20.0, 30.0) if args.quick else (60.0, 60.0)
    name = "quick" if args.quick else "latest"
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + (f" --reps {args.reps}" if args.reps else "") + (
        f" --only {args.only}" if args.only != ",".join(PHASES) else "")

    began, began_wall = time.monotonic(), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="mlproxy-bench-", dir="/tmp"))
    all_ports = ports(args.port_offset)
    meta = {
        "command": command,
        "started": began_wall.isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": procs.machine_info(),
        "versions": {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}},
        "repetitions": reps,
        "idle_settle_s": settle,
        "idle_window_s": window,
        "ports": {k: vars(v) for k, v in all_ports.items()},
        "work_dir": str(work),
    }
    meta["calibration_start"] = procs.calibrate()
    log(f"benchmarks: {', '.join(phases)}; {reps} repetitions; work dir {work}; load {procs.load()}; "
        f"calibration {meta['calibration_start']}")
    results: dict = {"meta": meta}
    try:
        if "startup" in phases:
            results["startup"] = run_startup(work, all_ports, reps)
        if "recovery" in phases:
            results["recovery"], stack_idle = run_recovery(work, all_ports, reps, settle, window, "idle" in phases)
            if stack_idle:
                results["idle"] = {"stack": stack_idle}
        elif "idle" in phases:
            # Idle without the recovery phase: a stack just for the idle measurement.
            _, stack_idle = run_recovery(work, all_ports, 0, settle, window, True)
            results["idle"] = {"stack": stack_idle}
        if "idle" in phases:
            log(f"idle: `mlflow server` with MLflow's defaults, ready, then {settle:.0f} s alone and {window:.0f} s watched")
            defaults = idle.mlflow_defaults_idle(OldRecipe(work / "old-existing", all_ports["old"]), settle, window)
            results["idle"]["mlflow_defaults"] = defaults
            log(f"idle: mlflow server defaults PSS {defaults['mlflow_defaults']['memory_median']['pss_mb']:.0f} MB, "
                f"{defaults['mlflow_defaults']['memory_median']['processes']} processes")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta["calibration_end"] = procs.calibrate()
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["duration_min"] = round((time.monotonic() - began) / 60, 1)
    summary = report.summarize(results)
    results["summary"] = summary
    table = report.markdown(results, summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
    docs = not args.quick and not args.no_docs and set(phases) == set(PHASES) and update_docs(table)
    log(f"done in {meta['duration_min']} min: {RESULTS / name}.md" + (f" (and {DOCS.relative_to(ROOT)})" if docs else ""))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
