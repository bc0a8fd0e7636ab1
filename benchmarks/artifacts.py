"""Artifacts and small REST calls through Jupyter's port, against MLflow direct and the stock routes.

    python -m benchmarks.artifacts                          # 100M,1G,3G; 3 runs (100 MB: 9, 3 GB: 2); see docs/benchmarks.md
    python -m benchmarks.artifacts --smoke                  # 16M,64M, 1 run, few calls: results/quick.*, docs untouched
    python -m benchmarks.artifacts --sizes 100M,1G --runs 5 --calls 600 --port-offset N

One mlproxy stack (`mlproxy up`), and beside it, on the same MLflow:
- "stock": a plain `jupyter server` from this environment with nothing of ours (mlproxy's server
  extension disabled, its jupyter-server-proxy entry point filtered out), serving MLflow through
  jupyter-server-proxy's generic /proxy/<port>/ route, as every setup without mlproxy does;
- "nginx": Debian's nginx (`apt-get install nginx-light`) run by hand as a streaming reverse proxy
  (the production alternative): the cost of one more hop on this machine, whoever makes it.

Artifact transfers: curl for every route (the same client: `-T` PUT to mlflow-artifacts, GET to
/dev/null), a file of random bytes in /var/tmp, runs interleaved route by route. Jupyter's peak
RSS growth: VmHWM is reset (/proc/PID/clear_refs) before each transfer and read after it.
Small calls: requests sessions in threads (one per thread), a runs/get GET and a log-metric POST.

Writes benchmarks/results/artifacts.{json,md}, docs/images/artifacts-throughput.png and the
section between the artifacts markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
import requests.adapters
import urllib3
import urllib3.connection

from benchmarks import procs
from benchmarks.report import rewrite_between, save_results
from benchmarks.scale import log, percentile
from mlproxy_supervisor.config import read_resolved
from tests.stack import Stack, port_is_free

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "artifacts-throughput.png"
BEGIN, END = "<!-- artifacts:begin (written by benchmarks/artifacts.py) -->", "<!-- artifacts:end -->"
MB = 1 << 20
UNITS = {"M": MB, "G": 1 << 30}
BASE_PORTS = dict(jupyter=41888, mlflow=41001, metrics=41181, stock=41889, nginx=41080)
ARTIFACTS_API = "api/2.0/mlflow-artifacts/artifacts"
# Every route carries the transfers and the small calls. stock: what any route through Jupyter
# costs; nginx: what one more hop costs when it is a C proxy outside Jupyter.
ROUTES = ("direct", "mlflow", "stock", "nginx")
LABELS = {"direct": "direct to MLflow", "mlflow": "mlproxy /mlflow/", "stock": "stock jupyter-server-proxy /proxy/<port>/", "nginx": "nginx"}
# The targets.
THROUGHPUT_RATIO, RSS_GROWTH_MB, P50_SLACK_MS, C8_RATIO = 0.90, 64, 2.0, 0.95
CONCURRENCY = (1, 8)
TRANSFER_TIMEOUT = 3600  # seconds per curl transfer: a stall shows as a failure, never a hang


@dataclass(frozen=True)
class Target:
    """Where a client sends MLflow's REST paths: `base` + path, over TCP or a unix socket."""

    name: str
    base: str  # http://host:port/prefix, without the trailing slash
    token: str | None = None  # Jupyter's, for the routes through Jupyter
    unix_socket: str | None = None
    jupyter_pid: int | None = None  # whose RSS the transfer may grow
    proxy_pid: int | None = None  # a hop outside Jupyter (nginx's master)

    @property
    def hop_pid(self) -> int | None:
        """The process between client and MLflow, whose CPU (with its children's) a transfer costs."""
        return self.jupyter_pid or self.proxy_pid

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def curl_args(self) -> list[str]:
        return ["--unix-socket", self.unix_socket] if self.unix_socket else []

    def session(self) -> requests.Session:
        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"token {self.token}"
        if self.unix_socket:
            session.mount("http://", _UnixSocketAdapter(self.unix_socket))
        return session


def direct_target(stack: Stack) -> Target:
    """MLflow as the running stack resolved it: the one place that knows how to reach it directly,
    its unix socket or its TCP address (`Settings.mlflow_url`)."""
    settings = read_resolved(stack.state_dir / "run" / "resolved.json")
    if settings.mlflow_socket:
        return Target("direct", "http://localhost", unix_socket=str(settings.mlflow_socket))
    return Target("direct", settings.mlflow_url)


def mlflow_tcp_port(stack: Stack) -> int:
    """The TCP port the stock route and nginx reach MLflow on (both need MLflow on TCP)."""
    return stack.mlflow_port


class _UnixSocketConnection(urllib3.connection.HTTPConnection):
    socket_path = ""  # set per adapter

    def _new_conn(self) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.socket_path)
        return connection


class _UnixSocketAdapter(requests.adapters.HTTPAdapter):
    """requests over a unix socket (as curl --unix-socket): the URL's host is only the Host header."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        connection = type("Connection", (_UnixSocketConnection,), {"socket_path": self.socket_path})
        self.poolmanager.pool_classes_by_scheme = {"http": type("Pool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": connection})}


# --- the routes ---------------------------------------------------------------------------------
# jupyter-server-proxy calls every jupyter_serverproxy_servers entry point; ours must not be there.
STOCK_JUPYTER = (
    "import sys, jupyter_server_proxy.config as config\n"
    "found = config.entry_points\n"
    "config.entry_points = lambda **kw: [e for e in found(**kw) if not e.value.startswith('mlproxy_supervisor')]\n"
    "from jupyter_server.serverapp import main\n"
    "sys.exit(main())\n"
)


def start_stock_jupyter(directory: Path, port: int, token: str) -> subprocess.Popen:
    """A plain `jupyter server` with jupyter-server-proxy and nothing of mlproxy's."""
    config = directory / "config"
    config.mkdir(parents=True)
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"mlproxy_supervisor.jupyter": False}}}))
    (directory / "root").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROXY_", "JUPYTER"))}
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(directory / "runtime"), JUPYTER_DATA_DIR=str(directory / "data"), JUPYTER_TOKEN=token)
    argv = [sys.executable, "-c", STOCK_JUPYTER, f"--port={port}", "--ip=127.0.0.1", "--no-browser", f"--ServerApp.root_dir={directory / 'root'}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    return subprocess.Popen(argv, env=env, stdout=open(directory / "jupyter.log", "w"), stderr=subprocess.STDOUT)


NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream mlflow {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://mlflow;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{mlflow_port};
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(directory: Path, port: int, mlflow_port: int) -> subprocess.Popen:
    """Debian's nginx as a reverse proxy in front of MLflow: keep-alive upstream, no buffering."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("benchmarks.artifacts: nginx is not installed: apt-get install -y nginx-light")
    directory.mkdir(parents=True)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, upstream=f"127.0.0.1:{mlflow_port}", port=port, mlflow_port=mlflow_port))
    return subprocess.Popen([binary, "-c", str(conf), "-p", str(directory)], stdout=open(directory / "out.log", "w"), stderr=subprocess.STDOUT)


def wait_answering(target: Target, path: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    session = target.session()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {process.returncode} before answering")
        try:
            if session.get(target.url(path), timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{target.name} did not answer {path} within {timeout} s")


def check_stock_is_stock(stock: Target, mlproxy_route: Target) -> None:
    """The stock server must serve MLflow through jupyter-server-proxy alone: no /mlflow/ route."""
    answer = stock.session().get(stock.base.split("/proxy/")[0] + "/mlflow/health", timeout=30, allow_redirects=False)
    if answer.status_code != 404:
        raise RuntimeError(f"the stock Jupyter serves /mlflow/ ({answer.status_code}): mlproxy's extension or entry point is loaded")
    if mlproxy_route.session().get(mlproxy_route.url("health"), timeout=30).status_code != 200:
        raise RuntimeError("mlproxy's /mlflow/ route does not answer")


# --- artifact transfers -------------------------------------------------------------------------
def parse_size(text: str) -> int:
    text = text.strip().upper()
    if text[-1:] not in UNITS or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r}: write it as a number and M or G, e.g. 100M or 3G")
    return int(text[:-1]) * UNITS[text[-1]]


def size_label(size: int) -> str:
    return f"{size >> 30} GB" if size >= 1 << 30 and size % (1 << 30) == 0 else f"{size >> 20} MB"


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for _ in range(size // MB):
            out.write(os.urandom(MB))
        out.write(os.urandom(size % MB))


def _peak_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak(pid: int) -> bool:
    """Make VmHWM the current RSS again (Linux clear_refs "5"), so each transfer's peak is its own."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def curl(target: Target, method: str, path: str, header_file: Path | None, upload: Path | None = None) -> dict:
    """One transfer with curl: bytes/s, HTTP status, curl's exit code and, on failure, the reason."""
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(TRANSFER_TIMEOUT), *target.curl_args(), "-X", method,
            "-w", "%{speed_upload} %{speed_download} %{http_code} %{size_download} %{size_upload}", "-H", "Expect:"]
    if header_file is not None:
        argv += ["-H", f"@{header_file}"]  # the token from a 0600 file, never in argv
    if upload is not None:
        argv += ["-T", str(upload), "-H", "Content-Type: application/octet-stream"]
    argv.append(target.url(path))
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    speed_up, speed_down, status, size_down, size_up = result.stdout.split()
    return {"speed_up": float(speed_up), "speed_down": float(speed_down), "status": int(status), "curl_exit": result.returncode,
            "bytes_down": int(size_down), "bytes_up": int(size_up), "error": result.stderr.strip()[-300:]}


def transfer(
    target: Target, direction: str, path: str, size: int, header_file: Path | None, upload: Path | None, stored: Path | None, mlflow_pid: int
) -> dict:
    """One timed upload or download; a wrong status, a short body or a short stored file is a failure.
    Also the CPU seconds per GB it cost MLflow and the hop in between."""
    pid = target.jupyter_pid
    reset = pid is not None and _reset_peak(pid)
    before = _peak_rss(pid) if pid is not None else None
    measured = [mlflow_pid] + ([target.hop_pid] if target.hop_pid else [])
    cpu_before = [_tree_cpu_seconds(pid) for pid in measured]
    outcome = curl(target, "PUT" if direction == "upload" else "GET", path, header_file, upload)
    cpu_spent = [_tree_cpu_seconds(pid) - before for pid, before in zip(measured, cpu_before, strict=True)]
    after = _peak_rss(pid) if pid is not None else None
    if direction == "upload":
        arrived = stored.stat().st_size if stored is not None and stored.exists() else 0
        ok = outcome["status"] == 200 and outcome["curl_exit"] == 0 and arrived == size
        speed = outcome["speed_up"]
    else:
        arrived = outcome["bytes_down"]
        ok = outcome["status"] == 200 and outcome["curl_exit"] == 0 and arrived == size
        speed = outcome["speed_down"]
    sample = {"ok": ok, "mb_per_s": speed / MB if ok else None, "status": outcome["status"], "curl_exit": outcome["curl_exit"], "bytes_arrived": arrived}
    per_gb = [spent / (size / (1 << 30)) for spent in cpu_spent]
    sample["mlflow_cpu_s_per_gb"], sample["proxy_cpu_s_per_gb"] = per_gb[0], per_gb[1] if len(per_gb) > 1 else None
    if not ok:
        sample["failure"] = f"HTTP {outcome['status']}, curl exit {outcome['curl_exit']}, {arrived} of {size} bytes" + (f": {outcome['error']}" if outcome["error"] else "")
    if before is not None:
        # With the peak reset, growth is the transfer's own peak over the RSS it started from.
        start = before[0] if reset else before[1]
        sample["rss_growth_mb"] = max(0, after[1] - start) / MB
        sample["peak_reset"] = reset
    return sample


def runs_for(size: int, runs: int, big_runs: int, small_runs: int) -> int:
    """Transfers under 1 GB take a second and vary most from one to the next: more of them."""
    if size < 1 << 30:
        return max(runs, small_runs)
    return runs if size < 2 << 30 else min(runs, big_runs)


def measure_transfers(
    targets: dict[str, Target], stack: Stack, sizes: list[int], runs: tuple[int, int, int], scratch: Path, header_file: Path
) -> list[dict]:
    """For each size: a seed file uploaded directly, then per run and route an upload (checked on
    MLflow's disk, then deleted) and a download of the seed (checked by length)."""
    artifacts = read_resolved(stack.state_dir / "run" / "resolved.json").mlflow.artifacts_destination
    results = []
    for size in sizes:
        source = scratch / f"random-{size}.bin"
        log(f"{size_label(size)}: writing {source}")
        random_file(source, size)
        seed_path = f"bench/{uuid.uuid4().hex}/seed.bin"
        seed = curl(targets["direct"], "PUT", f"{ARTIFACTS_API}/{seed_path}", None, source)
        if seed["status"] != 200:
            raise RuntimeError(f"the seed upload direct to MLflow failed: {seed}")
        count = runs_for(size, *runs)
        samples = {route: {"upload": [], "download": []} for route in ROUTES}
        for run in range(count):
            for route in ROUTES:
                target = targets[route]
                name = f"bench/{uuid.uuid4().hex}/{route}.bin"
                stored = Path(artifacts) / name
                header = header_file if target.token else None
                mlflow_pid = stack.pid("mlflow")
                up = transfer(target, "upload", f"{ARTIFACTS_API}/{name}", size, header, source, stored, mlflow_pid)
                shutil.rmtree(stored.parent, ignore_errors=True)
                down = transfer(target, "download", f"{ARTIFACTS_API}/{seed_path}", size, header, None, None, mlflow_pid)
                samples[route]["upload"].append(up)
                samples[route]["download"].append(down)
                log(f"{size_label(size)} run {run + 1}/{count} {route}: up {_speed(up)}, down {_speed(down)}")
        shutil.rmtree((Path(artifacts) / seed_path).parent, ignore_errors=True)
        source.unlink()
        results.append({"size": size, "label": size_label(size), "runs": count, "samples": samples})
    return results


def _speed(sample: dict) -> str:
    text = f"{sample['mb_per_s']:.0f} MB/s" if sample["ok"] else f"FAILED ({sample['failure'][:80]})"
    return text + (f" (RSS +{sample['rss_growth_mb']:.1f} MB)" if "rss_growth_mb" in sample else "")


# --- small REST calls ---------------------------------------------------------------------------
def _create_run(target: Target) -> str:
    session = target.session()
    experiment = session.post(target.url("api/2.0/mlflow/experiments/create"), json={"name": f"bench-calls-{uuid.uuid4().hex[:8]}"}, timeout=60)
    experiment.raise_for_status()
    created = session.post(target.url("api/2.0/mlflow/runs/create"), json={"experiment_id": experiment.json()["experiment_id"]}, timeout=60)
    created.raise_for_status()
    return created.json()["run"]["info"]["run_id"]


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (nginx's worker, uvicorn's workers)."""
    return sum(procs.cpu_seconds(member) or 0.0 for member in procs.descendants(pid))


def call_round(target: Target, call: str, run_id: str, clients: int, calls: int) -> dict:
    """`calls` requests spread over `clients` threads, each with its own keep-alive session; and
    for a route through Jupyter, the Jupyter server's CPU time per request."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_together = threading.Barrier(clients + 1)

    def client() -> None:
        session = target.session()
        mine, failed = [], []
        get_url, post_url = target.url("api/2.0/mlflow/runs/get"), target.url("api/2.0/mlflow/runs/log-metric")

        def one(step: int) -> requests.Response:
            if call == "status":  # Jupyter alone: its authenticated API, nothing proxied
                return session.get(target.url("api/status"), timeout=60)
            if call == "get":
                return session.get(get_url, params={"run_id": run_id}, timeout=60)
            body = {"run_id": run_id, "key": f"bench-{threading.get_ident()}", "value": step, "timestamp": int(time.time() * 1000), "step": step}
            return session.post(post_url, json=body, timeout=60)

        for step in range(3):  # the connection, and Python's first-call costs, outside the timing
            one(step)
        start_together.wait()
        for step in range(calls // clients):
            began = time.perf_counter()
            try:
                answer = one(step)
                if answer.status_code != 200:
                    failed.append(f"HTTP {answer.status_code}")
            except requests.RequestException as error:
                failed.append(type(error).__name__)
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = procs.cpu_seconds(target.jupyter_pid) if target.jupyter_pid else None
    start_together.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu_ms = (procs.cpu_seconds(target.jupyter_pid) - cpu_before) * 1000 / len(latencies) if cpu_before is not None else None
    return {"p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000, "per_s": len(latencies) / wall,
            "jupyter_cpu_ms": cpu_ms, "requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors))}


def measure_calls(targets: dict[str, Target], rounds: int, calls: int) -> dict:
    """Per call, concurrency and route: the medians over `rounds` rounds, routes interleaved."""
    run_id = _create_run(targets["direct"])
    results: dict = {}
    for call in ("get", "post"):
        for clients in CONCURRENCY:
            per_route: dict[str, list[dict]] = {route: [] for route in ROUTES}
            for _ in range(rounds):
                for route in ROUTES:
                    per_route[route].append(call_round(targets[route], call, run_id, clients, calls))
            results[f"{call} c={clients}"] = {route: _median_round(rounds_) for route, rounds_ in per_route.items()}
            log(f"{call} c={clients}: " + ", ".join(f"{r} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms {v['per_s']:.0f}/s" for r, v in results[f"{call} c={clients}"].items()))
    return results


def measure_jupyter_alone(target: Target, rounds: int, calls: int) -> dict:
    """Jupyter's floor: its own authenticated /api/status, sequential. Any handler inside Jupyter,
    ours or jupyter-server-proxy's, pays at least this CPU per request before it proxies a byte."""
    result = _median_round([call_round(target, "status", "", 1, calls) for _ in range(rounds)])
    log(f"Jupyter alone (/api/status c=1): p50 {result['p50_ms']:.2f} ms, Jupyter CPU {result['jupyter_cpu_ms']:.2f} ms per request")
    return result


def _median_round(rounds: list[dict]) -> dict:
    median = {key: statistics.median(r[key] for r in rounds) for key in ("p50_ms", "p99_ms", "per_s")}
    cpu = [r["jupyter_cpu_ms"] for r in rounds if r["jupyter_cpu_ms"] is not None]
    median["jupyter_cpu_ms"] = statistics.median(cpu) if cpu else None
    return {**median, "rounds": len(rounds), "requests": sum(r["requests"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
            "error_kinds": sorted({kind for r in rounds for kind in r["error_kinds"]})}


# --- summary, verdicts, files -------------------------------------------------------------------
def summarize(transfers: list[dict], calls: dict) -> dict:
    """Medians per size, route and direction; each target's verdict."""
    rows = []
    for entry in transfers:
        for direction in ("upload", "download"):
            row = {"size": entry["label"], "direction": direction, "runs": entry["runs"]}
            for route in ROUTES:
                samples = entry["samples"][route][direction]
                good = [s["mb_per_s"] for s in samples if s["ok"]]
                growth = [s["rss_growth_mb"] for s in samples if "rss_growth_mb" in s]
                mlflow_cpu = [s["mlflow_cpu_s_per_gb"] for s in samples if s["ok"]]
                proxy_cpu = [s["proxy_cpu_s_per_gb"] for s in samples if s["ok"] and s["proxy_cpu_s_per_gb"] is not None]
                row[route] = {
                    "mlflow_cpu_s_per_gb": statistics.median(mlflow_cpu) if mlflow_cpu else None,
                    "proxy_cpu_s_per_gb": statistics.median(proxy_cpu) if proxy_cpu else None,
                    "mb_per_s": statistics.median(good) if good else None,
                    "failed": len(samples) - len(good),
                    "failures": sorted({s["failure"].split(":")[0] for s in samples if not s["ok"]}),
                    "rss_growth_mb_max": max(growth) if growth else None,
                }
            direct = row["direct"]["mb_per_s"]
            for route in ("mlflow", "stock", "nginx"):
                ours = row[route]["mb_per_s"]
                row[route]["of_direct"] = ours / direct if ours and direct and not row[route]["failed"] else None
            ours, nginx = row["mlflow"]["mb_per_s"], row["nginx"]["mb_per_s"]
            row["mlflow"]["of_nginx"] = ours / nginx if ours and nginx and not row["nginx"]["failed"] else None
            rows.append(row)
    throughput_ok = all(r["mlflow"]["of_direct"] is not None and r["mlflow"]["of_direct"] >= THROUGHPUT_RATIO for r in rows)
    rss_ok = all(r["mlflow"]["rss_growth_mb_max"] is not None and r["mlflow"]["rss_growth_mb_max"] <= RSS_GROWTH_MB for r in rows)
    p50_over = {name: by_route["mlflow"]["p50_ms"] - by_route["direct"]["p50_ms"] for name, by_route in calls.items()}
    stock_p50_over = {name: by_route["stock"]["p50_ms"] - by_route["direct"]["p50_ms"] for name, by_route in calls.items()}
    c8_ratio = {name: by_route["mlflow"]["per_s"] / by_route["direct"]["per_s"] for name, by_route in calls.items() if name.endswith("c=8")}
    stock_failures = [f"{r['size']} {r['direction']}" for r in rows if r["stock"]["failed"]]
    return {
        "transfers": rows,
        "p50_over_direct_ms": p50_over,
        "stock_p50_over_direct_ms": stock_p50_over,
        "c8_throughput_of_direct": c8_ratio,
        "stock_fails_from": stock_failures[0] if stock_failures else None,
        "targets": {
            f"throughput through /mlflow/ >= {THROUGHPUT_RATIO:.0%} of direct, every size and direction": throughput_ok,
            f"Jupyter peak RSS growth <= {RSS_GROWTH_MB} MB, every size and direction": rss_ok,
            # Apart: at c=8 the machine is saturated and p50 is queueing (8 / throughput), which the c=8 throughput target covers.
            **{f"small-call p50 <= {P50_SLACK_MS:g} ms over direct at {level}": all(v <= P50_SLACK_MS for name, v in p50_over.items() if name.endswith(level))
               for level in (f"c={c}" for c in CONCURRENCY)},
            f"c=8 throughput >= {C8_RATIO:.0%} of direct": all(v >= C8_RATIO for v in c8_ratio.values()),
            "no small-call errors on any route": all(v["errors"] == 0 for by_route in calls.values() for v in by_route.values()),
        },
    }


def _cell(row: dict, route: str) -> str:
    value = row[route]
    if value["failed"]:
        runs = row["runs"]
        return f"**failed** {value['failed']}/{runs} ({', '.join(value['failures'])})"
    text = f"{value['mb_per_s']:.0f}"
    if value.get("of_direct") is not None:
        text += f" ({value['of_direct']:.0%})"
    return text


def _cpu_cell(value: dict) -> str:
    if value["failed"] or value["mlflow_cpu_s_per_gb"] is None:
        return "-"
    hop = value["proxy_cpu_s_per_gb"]
    return f"{value['mlflow_cpu_s_per_gb']:.2f}" + ("" if hop is None else f" + {hop:.2f}")


def _rss(row: dict, route: str) -> str:
    growth = row[route]["rss_growth_mb_max"]
    return "-" if growth is None else f"{growth:.1f}"


def markdown(results: dict) -> str:
    summary, conditions = results["summary"], results["conditions"]
    lines = [
        f"{'**Smoke run, not quotable.** ' if conditions['smoke'] else ''}Run of {conditions['date']} at commit {conditions['commit']}, "
        f"{conditions['machine']}, load average {conditions['load_before']} before, {conditions['minutes']:.0f} min. Reproduce with:",
        "",
        f"    {conditions['command']}",
        "",
        "Artifact throughput in MB/s (MB = 2^20 bytes; median of the runs, % of direct in brackets; curl for every route), "
        "and the Jupyter server's peak RSS growth (VmHWM, reset before each transfer; the largest over the runs):",
        "",
        "| size | direction | runs | direct | mlproxy `/mlflow/` | stock jupyter-server-proxy | nginx | `/mlflow/` of nginx | RSS growth `/mlflow/` (MB) | RSS growth stock (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["transfers"]:
        of_nginx = row["mlflow"]["of_nginx"]
        lines.append(f"| {row['size']} | {row['direction']} | {row['runs']} | {_cell(row, 'direct')} | {_cell(row, 'mlflow')} | "
                     f"{_cell(row, 'stock')} | {_cell(row, 'nginx')} | {'-' if of_nginx is None else f'{of_nginx:.0%}'} | "
                     f"{_rss(row, 'mlflow')} | {_rss(row, 'stock')} |")
    fails = summary["stock_fails_from"]
    lines += ["", f"Stock jupyter-server-proxy: {'first failure at ' + fails if fails else 'no failure at these sizes'}.", ""]
    lines += [
        "CPU seconds per GB transferred (median of the good runs; /proc/PID/stat of the process and its children, around each transfer): "
        "MLflow's, and + the hop's in between (the Jupyter server, or nginx's master and worker):",
        "",
        "| size | direction | direct | mlproxy `/mlflow/` | stock jupyter-server-proxy | nginx |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in summary["transfers"]:
        lines.append(f"| {row['size']} | {row['direction']} | {' | '.join(_cpu_cell(row[route]) for route in ROUTES)} |")
    lines.append("")
    lines += [f"![Artifact throughput by size, route and direction]({PLOT.relative_to(DOC.parent).as_posix()})", ""]
    lines += [
        "Small REST calls (runs/get GET, log-metric POST; requests sessions, one per thread; median of "
        f"{conditions['rounds']} rounds of {conditions['calls']} calls): p50 / p99 in ms, and requests per second.",
        "",
        "| call | direct | mlproxy `/mlflow/` | stock jupyter-server-proxy | nginx | `/mlflow/` p50 over direct | stock p50 over direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_route in results["calls"].items():
        cells = [f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f}, {v['per_s']:.0f}/s" + (f", **{v['errors']} errors**" if v["errors"] else "") for v in (by_route[r] for r in ROUTES)]
        lines.append(f"| {name} | {' | '.join(cells)} | {summary['p50_over_direct_ms'][name]:+.2f} ms | {summary['stock_p50_over_direct_ms'][name]:+.2f} ms |")
    alone = results["jupyter_alone"]
    lines += [
        "",
        "The Jupyter server's CPU time per request (ms; /proc/PID/stat over each round, median of the rounds), "
        "beside Jupyter alone: its own authenticated `/api/status`, nothing proxied, the least any handler inside Jupyter costs:",
        "",
        "| call | mlproxy `/mlflow/` | stock jupyter-server-proxy |",
        "|---|---:|---:|",
    ]
    for name, by_route in results["calls"].items():
        lines.append(f"| {name} | {by_route['mlflow']['jupyter_cpu_ms']:.2f} | {by_route['stock']['jupyter_cpu_ms']:.2f} |")
    lines.append(f"| Jupyter alone, `/api/status` c=1 | {alone['jupyter_cpu_ms']:.2f} (p50 {alone['p50_ms']:.2f} ms) | |")
    lines += ["", "Targets (issue #11):", ""]
    lines += [f"- {name}: {'PASS' if ok else '**MISS**'}" for name, ok in summary["targets"].items()]
    ratios = ", ".join(f"{name} {value:.0%}" for name, value in summary["c8_throughput_of_direct"].items())
    nginx = ", ".join(f"{name} {v['nginx']['per_s'] / v['direct']['per_s']:.0%}" for name, v in results["calls"].items() if name.endswith("c=8"))
    lines += [f"- (c=8 throughput of direct: {ratios}; nginx's: {nginx})"]
    of_nginx = [f"{r['size']} {r['direction']} {r['mlflow']['of_nginx']:.0%}" for r in summary["transfers"] if r["mlflow"]["of_nginx"] is not None]
    lines += [f"- (transfer throughput through `/mlflow/` of nginx's: {', '.join(of_nginx)})"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]["transfers"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    width = 0.8 / len(ROUTES)
    for axis, direction in zip(axes, ("upload", "download"), strict=True):
        mine = [r for r in rows if r["direction"] == direction]
        for offset, route in enumerate(ROUTES):
            xs = [i + (offset - (len(ROUTES) - 1) / 2) * width for i in range(len(mine))]
            values = [r[route]["mb_per_s"] if not r[route]["failed"] else 0 for r in mine]
            axis.bar(xs, values, width, label=LABELS[route])
            for x, row in zip(xs, mine, strict=True):
                if row[route]["failed"]:
                    axis.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8, color="darkred")
        axis.set_xticks(range(len(mine)), [r["size"] for r in mine])
        axis.set_title(direction)
        axis.set_xlabel("artifact size")
    axes[0].set_ylabel("MB/s (median, curl)")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(ROUTES), fontsize=8)  # below: bars fill the axes
    figure.suptitle("Artifact throughput by route" + (" (smoke run)" if results["conditions"]["smoke"] else ""))
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [parse_size(s) for s in text.split(",")], default=None, help="e.g. 100M,1G,3G (the default)")
    parser.add_argument("--runs", type=int, default=None, help="runs per size (default 3)")
    parser.add_argument("--big-runs", type=int, default=2, help="runs for sizes of 2 GB and more (default 2)")
    parser.add_argument("--small-runs", type=int, default=9, help="runs for sizes under 1 GB (default 9)")
    parser.add_argument("--calls", type=int, default=None, help="small calls per round and concurrency (default 800)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of small calls, routes interleaved (default 3)")
    parser.add_argument("--smoke", action="store_true", help="16M,64M, 1 run, 80 calls, 1 round; writes results/quick.*, leaves the docs alone")
    parser.add_argument("--port-offset", type=int, default=int(os.environ.get("MLPROXY_TEST_PORT_OFFSET", "0")), help="shift the ports (41001-41889)")
    args = parser.parse_args()
    smoke_defaults = dict(sizes=[16 * MB, 64 * MB], runs=1, calls=80) if args.smoke else dict(sizes=[100 * MB, 1 << 30, 3 << 30], runs=3, calls=800)
    for name, value in smoke_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.smoke:
        args.rounds = 1
        args.small_runs = 1
    ports = {name: port + args.port_offset for name, port in BASE_PORTS.items()}
    busy = [port for port in ports.values() if not port_is_free(port)]
    if busy:
        raise SystemExit(f"benchmarks.artifacts: ports {busy} are in use; pick others with --port-offset N")
    began, load_before = time.monotonic(), " ".join(f"{x:.2f}" for x in os.getloadavg())

    with tempfile.TemporaryDirectory(prefix="mlproxy-artifacts-bench-", dir="/var/tmp") as scratch_dir:
        scratch = Path(scratch_dir)
        # MLflow on TCP (not the default socket): the stock jupyter-server-proxy route and nginx
        # can only reach a TCP port, and every route must end at the same MLflow.
        stack = Stack(
            scratch / "state", jupyter_port=ports["jupyter"], mlflow_port=ports["mlflow"], metrics_port=ports["metrics"],
            config='[mlflow]\nlisten = "tcp"\n',
        )
        helpers: list[subprocess.Popen] = []
        try:
            log("starting the mlproxy stack")
            stack.start(timeout=300)
            token = stack.token
            header_file = scratch / "auth-header"
            header_file.touch(mode=0o600)
            header_file.write_text(f"Authorization: token {token}\n")
            stock_process = start_stock_jupyter(scratch / "stock", ports["stock"], token)
            helpers.append(stock_process)
            nginx = start_nginx(scratch / "nginx", ports["nginx"], mlflow_tcp_port(stack))
            helpers.append(nginx)
            targets = {
                "direct": direct_target(stack),
                "mlflow": Target("mlflow", f"{stack.base}/mlflow", token, jupyter_pid=stack.pid("jupyter")),
                "stock": Target("stock", f"http://127.0.0.1:{ports['stock']}/proxy/{mlflow_tcp_port(stack)}", token, jupyter_pid=stock_process.pid),
                "nginx": Target("nginx", f"http://127.0.0.1:{ports['nginx']}", proxy_pid=nginx.pid),
            }
            for target, process in ((targets["stock"], stock_process), (targets["nginx"], nginx)):
                wait_answering(target, "health", 180, process)
            check_stock_is_stock(targets["stock"], targets["mlflow"])
            log(f"routes answer; transfers of {', '.join(size_label(s) for s in args.sizes)}, {args.runs} runs")
            transfers = measure_transfers(targets, stack, args.sizes, (args.runs, args.big_runs, args.small_runs), scratch, header_file)
            log(f"small calls: {args.rounds} rounds of {args.calls}")
            calls = measure_calls(targets, args.rounds, args.calls)
            jupyter_alone = measure_jupyter_alone(Target("jupyter", stack.base, token, jupyter_pid=stack.pid("jupyter")), args.rounds, args.calls)
        finally:
            for process in helpers:
                process.terminate()
            for process in helpers:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
            stack.stop()

    command = "python -m benchmarks.artifacts" + (" --smoke" if args.smoke else "")
    if not args.smoke:
        command += f" --sizes {','.join(size_label(s).replace(' GB', 'G').replace(' MB', 'M') for s in args.sizes)} --runs {args.runs} --big-runs {args.big_runs} --small-runs {args.small_runs} --calls {args.calls} --rounds {args.rounds}"
    results = {
        "conditions": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(), "smoke": args.smoke, "command": command,
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores", "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.monotonic() - began) / 60,
            "calls": args.calls, "rounds": args.rounds, "curl": subprocess.run(["curl", "--version"], check=False, capture_output=True, text=True).stdout.split("\n")[0],
        },
        "transfers": transfers,
        "calls": calls,
        "jupyter_alone": jupyter_alone,
    }
    results["summary"] = summarize(transfers, calls)
    stem = "quick.artifacts" if args.smoke else "artifacts"
    text = markdown(results)
    save_results(RESULTS, stem, results, text)
    plot(results, RESULTS / "quick.artifacts-throughput.png" if args.smoke else PLOT)
    if not args.smoke:
        rewrite_between(DOC, BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
