"""Concurrent logging clients through /mlflow/: SQLite at 1 worker, PostgreSQL at 1, 2 and 4.

    python -m benchmarks.scale                 # about 12 min on 2 cores
    python -m benchmarks.scale --seconds 3     # smoke run

Writes benchmarks/results/scale.{json,md} and docs/images/scale-latency.png. Each client is a
thread with its own keep-alive session (as the MLflow client keeps one), posting log-metric
through Jupyter's route with the token for a fixed time; the client threads share this
process and its 2 cores with the stack, so the absolute numbers are this machine's, and the
comparison between stores and worker counts is the result. A second part measures one client's
median request latency, keep-alive versus a new connection per request, over the route and on
MLflow's own listener (its unix socket; its port with listen = "tcp"), at 1 and 2 workers (the ~40 ms keep-alive penalty of uvicorn >= 2 workers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

from benchmarks.report import rewrite_between
from mlproxy_supervisor.local_http import connection as http_connection
from tests.stack import Stack
from tests.support.postgres import Postgres

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "images" / "scale-latency.png"
DOC = ROOT / "docs" / "SCALING.md"
BEGIN, END = "<!-- scale:begin (written by benchmarks/scale.py) -->", "<!-- scale:end -->"
CONCURRENCY = (1, 4, 16, 64)
SETUPS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4))
PORTS = dict(jupyter_port=62888, mlflow_port=62001, metrics_port=62181)
POSTGRES_PORT = 62432


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _create_run(stack: Stack) -> str:
    session = stack.session()
    experiment = session.post(stack.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": f"bench-{uuid.uuid4().hex[:8]}"}, timeout=60).json()["experiment_id"]
    return session.post(stack.url("mlflow/api/2.0/mlflow/runs/create"), json={"experiment_id": experiment}, timeout=60).json()["run"]["info"]["run_id"]


def load(stack: Stack, clients: int, seconds: float) -> dict:
    """`clients` threads logging metrics for `seconds`; latencies of the answered requests."""
    run_id = _create_run(stack)
    url = stack.url("mlflow/api/2.0/mlflow/runs/log-metric")
    latencies: list[float] = []
    errors = {"locked": 0, "5xx": 0, "other": 0}
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(number: int) -> None:
        session = stack.session()
        step = 0
        start.wait()
        while time.monotonic() < stop_at[0]:
            step += 1
            body = {"run_id": run_id, "key": f"c{number}", "value": step, "timestamp": int(time.time() * 1000), "step": step}
            began = time.monotonic()
            try:
                answer = session.post(url, json=body, timeout=120)
                status, text = answer.status_code, answer.text
            except requests.RequestException as error:
                status, text = 0, str(error)
            took = time.monotonic() - began
            with lock:
                if status == 200:
                    latencies.append(took)
                elif "locked" in text:
                    errors["locked"] += 1
                elif status >= 500:
                    errors["5xx"] += 1
                else:
                    errors["other"] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join(300)
    elapsed = time.monotonic() - began
    return {
        "clients": clients,
        "requests": len(latencies),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "errors": errors,
    }


def keepalive(stack: Stack, requests_per_case: int = 60) -> dict:
    """Median latency of one GET, keep-alive versus a new connection each time, on two paths."""
    found = {}
    route = stack.url("mlflow/api/2.0/mlflow/experiments/search?max_results=1")
    settings = stack.settings  # MLflow's own listener as the stack resolved it: its unix socket, or its TCP port
    for mode in ("keep_alive", "new_connection"):
        found[f"route_{mode}_ms"] = _median_ms(_route_get(route, stack.token, mode), requests_per_case)
        found[f"mlflow_direct_{mode}_ms"] = _median_ms(_direct_get(settings, mode), requests_per_case)
    return found


def _route_get(url: str, token: str, mode: str):
    session = requests.Session()
    headers = {"Authorization": f"token {token}", **({"Connection": "close"} if mode == "new_connection" else {})}
    return lambda: session.get(url, headers=headers, timeout=60).raise_for_status()


def _direct_get(settings, mode: str):
    connection = [http_connection(settings.mlflow_url, settings.mlflow_socket, 60)]

    def get() -> None:
        if mode == "new_connection":
            connection[0].close()
            connection[0] = http_connection(settings.mlflow_url, settings.mlflow_socket, 60)
        connection[0].request("GET", "/api/2.0/mlflow/experiments/search?max_results=1")
        response = connection[0].getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"MLflow answered {response.status}")

    return get


def _median_ms(request, count: int) -> float:
    times = []
    for _ in range(count + 5):
        began = time.monotonic()
        request()
        times.append(time.monotonic() - began)
    return round(statistics.median(times[5:]) * 1000, 1)  # 5 warm-up requests


def measure(setup: tuple[str, int], directory: Path, postgres: Postgres, seconds: float, port_offset: int = 0) -> dict:
    store, workers = setup
    config = f"[mlflow]\nworkers = {workers}\n"  # SQLite: the default store in the state directory
    if store == "postgresql":  # a fresh database per setup, as the SQLite setup gets a fresh file
        database = f"bench_w{workers}"
        postgres.create_database(database)
        config += f'backend_store_uri = "{postgres.uri.rsplit("/", 1)[0]}/{database}"\n'
    ports = {name: port + port_offset for name, port in PORTS.items()}
    stack = Stack(directory / f"{store}-{workers}" / "state", **ports, config=config)
    try:  # a stack that never gets ready is stopped too
        stack.start(timeout=300)
        log(f"{store}, {workers} worker(s): ready")
        rows = []
        for clients in CONCURRENCY:
            rows.append(load(stack, clients, seconds))
            log(f"  {clients:>2} clients: {rows[-1]}")
        latency = keepalive(stack)
        log(f"  keep-alive: {latency}")
        return {"store": store, "workers": workers, "load": rows, "single_client": latency}
    finally:
        stack.stop()


def markdown(results: dict) -> str:
    lines = [
        f"# Scale-out benchmark ({results['when']})",
        "",
        f"`python -m benchmarks.scale --seconds {results['seconds']:g}`, one run; {results['cores']} cores shared by the "
        "stack, its database and the client threads. Metric writes (`runs/log-metric`) through `/mlflow/` with the token, "
        "one keep-alive session per client; p50/p99 over every answered request.",
        "",
        "| store | workers | clients | writes/s | p50 ms | p99 ms | locked | 5xx | other errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["setups"]:
        for row in entry["load"]:
            e = row["errors"]
            lines.append(
                f"| {entry['store']} | {entry['workers']} | {row['clients']} | {row['throughput_per_s']} | {row['p50_ms']} | "
                f"{row['p99_ms']} | {e['locked']} | {e['5xx']} | {e['other']} |"
            )
    lines += [
        "",
        "One client, median of 60 GETs (`experiments/search`), keep-alive versus a new connection per request:",
        "",
        "| store | workers | route keep-alive | route new connection | MLflow direct keep-alive | MLflow direct new connection |",
        "|---|---|---|---|---|---|",
    ]
    for entry in results["setups"]:
        s = entry["single_client"]
        lines.append(
            f"| {entry['store']} | {entry['workers']} | {s['route_keep_alive_ms']} ms | {s['route_new_connection_ms']} ms | "
            f"{s['mlflow_direct_keep_alive_ms']} ms | {s['mlflow_direct_new_connection_ms']} ms |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for entry in results["setups"]:
        label = f"{entry['store']}, {entry['workers']} worker{'s' if entry['workers'] > 1 else ''}"
        clients = [row["clients"] for row in entry["load"]]
        left.plot(clients, [row["p50_ms"] for row in entry["load"]], marker="o", label=f"{label} p50")
        left.plot(clients, [row["p99_ms"] for row in entry["load"]], marker="x", linestyle="--", label=f"{label} p99")
        right.plot(clients, [row["throughput_per_s"] for row in entry["load"]], marker="o", label=label)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONCURRENCY), [str(n) for n in CONCURRENCY])
        axis.set_xlabel("concurrent logging clients")
        axis.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("latency per write (ms)")
    left.set_title("Latency by concurrency through /mlflow/")
    right.set_ylabel("acknowledged writes per second")
    right.set_title("Throughput")
    left.legend(fontsize=6)
    right.legend(fontsize=7)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)


def main() -> int:
    import os
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="load time per concurrency level")
    parser.add_argument("--port-offset", type=int, default=0, help="shift the ports (62001-62888; negative offsets too)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="mlproxy-scale-"))
    postgres = Postgres(POSTGRES_PORT + args.port_offset).init()
    postgres.start()
    try:
        setups = [measure(setup, directory, postgres, args.seconds, args.port_offset) for setup in SETUPS]
    finally:
        postgres.stop()
    results = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "seconds": args.seconds, "cores": os.cpu_count(), "setups": setups}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "scale.md").write_text(text)
    # docs/SCALING.md quotes the tables (its own heading stays).
    rewrite_between(DOC, BEGIN, END, f"Run of {results['when']}. " + text.split("\n", 2)[2].rstrip())
    plot(results)
    log(f"wrote {RESULTS / 'scale.md'} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
