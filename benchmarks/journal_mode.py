"""SQLite journal mode by measurement: rollback journal (DELETE, MLflow's default) against WAL, with
concurrent writers through the proxy (clients = 1, 4, 16), then crash recovery under load.

    python -m benchmarks.journal_mode [--seconds 20] [--port-offset N]

For each mode, one stack on a fresh database put in that mode before MLflow starts. For each
client count, that many processes (the real mlflow client, its retries off) log metrics to their
own runs through /mlflow/ for --seconds after a common start. Counted: writes acknowledged,
errors (and how many say "database is locked"), throughput, p50 and p99 latency. Then crash
recovery: kill -9 and SIGSTOP of MLflow while 4 clients write (tests/support/faults.py), every
acknowledged write read back, and SQLite's integrity check. Writes benchmarks/results/journal_mode.json
and the table between the journal-mode markers in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from benchmarks.report import rewrite_between

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "journal_mode.json"
DOC = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- journal-mode:begin (written by benchmarks/journal_mode.py) -->", "<!-- journal-mode:end -->"
CLIENT_COUNTS = (1, 4, 16)
CRASH_FAULTS = ("kill-mlflow", "freeze-mlflow", "kill-mlflow", "freeze-mlflow")

WRITER = r"""
import json, os, sys, time
os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="60", MLFLOW_DISABLE_TELEMETRY="true")
from mlflow.tracking import MlflowClient
client = MlflowClient()
experiment = client.get_experiment_by_name(sys.argv[3]) or None
experiment = experiment.experiment_id if experiment else client.create_experiment(sys.argv[3])
run = client.create_run(experiment).info.run_id
start_at, seconds = float(sys.argv[1]), float(sys.argv[2])
while time.time() < start_at:
    time.sleep(0.01)
latencies, errors, step = [], [], 0
while time.time() < start_at + seconds:
    began = time.perf_counter()
    try:
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
        latencies.append(time.perf_counter() - began)
        step += 1
    except Exception as error:
        errors.append(str(error)[:300])
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def concurrent_writes(stack, clients: int, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPROXY_"))}
    env.update(MLFLOW_TRACKING_URI=f"{stack.base}/mlflow", MLFLOW_TRACKING_TOKEN=stack.token)
    start_at = time.time() + 15 + clients * 2.5  # every client imported mlflow and made its run
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(start_at), str(seconds), f"writers-{clients}-{i}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(clients)
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"a writer failed before its measurement:\n{err[-2000:]}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    latencies = [value for out in outputs for value in out["latencies"]]
    errors = [error for out in outputs for error in out["errors"]]
    return {
        "clients": clients,
        "acknowledged": len(latencies),
        "errors": len(errors),
        "locked": sum("database is locked" in error for error in errors),
        "error_examples": sorted(set(errors))[:3],
        "writes_per_second": len(latencies) / seconds,
        "p50_ms": 1000 * _percentile(latencies, 0.50),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
    }


def crash_recovery(stack, directory: Path) -> dict:
    from tests.support.faults import Faults, Load

    load = Load(stack, directory, clients=4, seed=4)
    faults = Faults(stack, seed=4)
    try:
        while load.acknowledged() < 20:
            time.sleep(0.2)
        for kind in CRASH_FAULTS:
            before = load.acknowledged()
            faults.inject(kind)
            while load.acknowledged() < before + 10:
                time.sleep(0.2)
    finally:
        load.stop()
    checked = load.verify()
    return {
        "faults": len(faults.outcomes),
        "never_recovered": sum(not o.recovered for o in faults.outcomes),
        "recovery_median_s": statistics.median(o.seconds for o in faults.outcomes),
        "recovery_max_s": max(o.seconds for o in faults.outcomes),
        "journal_pending_at_freeze": sum(o.detail == "journal pending" for o in faults.outcomes),
        "acknowledged": checked["acknowledged"],
        "lost": len(checked["lost"]),
    }


def measure(mode: str, port_offset: int, seconds: float) -> dict:
    from mlproxy_supervisor.store import sqlite
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix=f"mlproxy-journal-{mode}-") as scratch:
        state = Path(scratch) / "state"
        state.mkdir()
        database = state / "mlflow.db"
        config = f'[mlflow]\nsqlite_journal_mode = "{mode}"\n'
        ports = dict(jupyter_port=32888 + port_offset, mlflow_port=32001 + port_offset, metrics_port=32181 + port_offset)
        stack = Stack(state, **ports, config=config).start(timeout=300)
        try:
            with closing(sqlite3.connect(database)) as connection:
                actual = connection.execute("PRAGMA journal_mode").fetchone()[0]
            assert actual == mode, f"the database is in {actual} mode, not {mode}"
            writes = [concurrent_writes(stack, clients, seconds) for clients in CLIENT_COUNTS]
            crash = crash_recovery(stack, Path(scratch))
        finally:
            stack.stop()
        integrity = sqlite.integrity_problems(database)
    return {"mode": mode, "writes": writes, "crash": {**crash, "integrity_ok": not integrity}}


def table(results: list[dict], command: str) -> str:
    lines = [
        f"Run of {time.strftime('%Y-%m-%d')} at commit {_commit()}, 2 cores. Reproduce with:", "", f"    {command}", "",
        "| mode | clients | writes/s | p50 (ms) | p99 (ms) | errors | of which \"database is locked\" |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for w in result["writes"]:
            lines.append(f"| {result['mode']} | {w['clients']} | {w['writes_per_second']:.1f} | {w['p50_ms']:.0f} | "
                         f"{w['p99_ms']:.0f} | {w['errors']} | {w['locked']} |")
    lines += ["", "| mode | crash faults (4 clients writing) | never recovered | recovery median / max (s) | "
              "acknowledged | lost | integrity check |", "|---|---:|---:|---:|---:|---:|---|"]
    for result in results:
        c = result["crash"]
        lines.append(f"| {result['mode']} | {c['faults']} | {c['never_recovered']} | {c['recovery_median_s']:.1f} / "
                     f"{c['recovery_max_s']:.1f} | {c['acknowledged']} | {c['lost']} | {'ok' if c['integrity_ok'] else 'FAILED'} |")
    return "\n".join(lines)


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port-offset", type=int, default=0, help="shift the ports (32888, 32001, 32181)")
    args = parser.parse_args()
    results = []
    for mode in ("delete", "wal"):
        results.append(measure(mode, args.port_offset, args.seconds))
        print(json.dumps(results[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    rewrite_between(DOC, BEGIN, END, table(results, f"python -m benchmarks.journal_mode --seconds {args.seconds:g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
