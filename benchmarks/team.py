"""Team mode (docs/team.md) from outside, as its users see it: one MLflow shared by a JupyterHub.

    python -m benchmarks.team                               # N = 2,8,16 servers; c = 1,4,8 clients; 3 runs
    python -m benchmarks.team --smoke                       # N=2, c=1, few calls: results/quick.team.*, docs untouched
    python -m benchmarks.team --users 2,8 --clients 1,4 --calls 400 --runs 5 --tokens 100

As root, after scripts/setup (the team tier's Hub harness, tests/support/hub.py: real Unix users
bench01..benchNN, made with useradd and removed at the end with userdel -r when this run made them).

1. Start and memory, for each N: a fresh Hub (configurable-http-proxy, then JupyterHub) and team
   stack wired by `mlproxy_supervisor.hub.configure(c, path)`; the Hub's start (the proxy's exec to
   the Hub's API answering through it), `mlproxy up` to `mlproxy status` ready (the agent's probe
   through the Hub's proxy), each user's server spawned in turn through the Hub's API (request to
   the Hub's model saying ready), then PSS (smaps_rollup) summed over each process tree at idle.
   The Hub starts first so that each start is timed alone: in the documented order (the stack
   first) the two overlap on the machine's cores.
2. Logging: c client threads, each with its own keep-alive connection (http.client, the same on
   every route) and a run of its own, POST runs/log-metric; routes interleaved run by run: the
   team route (/services/mlflow/ through the Hub's proxy, each client a Hub user with its token), a
   single-user stack's /mlflow/ (Jupyter's token), the team stack's MLflow directly on its unix
   socket (X-MLproxy-User set, as the service does) and, to tell the hop from MLflow's auth app,
   the single-user stack's MLflow directly (no auth app).
3. The Hub's token check: GET experiments/search?max_results=1 through the team route, with a
   token the service checked just before (cached) and, alternating on the same connection, with
   tokens it has never seen (made up front through the Hub's API, each used once).

Writes benchmarks/results/team.{json,md}, docs/images/team-memory.png, docs/images/team-latency.png
and the section between the team-bench markers in docs/team.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import pwd
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks import procs
from benchmarks.report import rewrite_between, save_results
from benchmarks.scale import log, percentile
from mlproxy_supervisor import credentials, local_http
from mlproxy_supervisor.config import Settings
from mlproxy_supervisor.hub import caller
from tests.stack import Stack
from tests.support.hub import SETUP_HINT, Hub, missing_requirements, wait_until
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "team.md"
MEMORY_PLOT = ROOT / "docs" / "images" / "team-memory.png"
LATENCY_PLOT = ROOT / "docs" / "images" / "team-latency.png"
BEGIN, END = "<!-- team-bench:begin (written by benchmarks/team.py) -->", "<!-- team-bench:end -->"
API = "api/2.0/mlflow"
READ = f"{API}/experiments/search?max_results=1"
LABELS = {
    "direct": "MLflow direct (team stack's socket)",
    "team": "team `/services/mlflow/` via the Hub's proxy",
    "single": "single-user `/mlflow/` via Jupyter",
    "single_direct": "MLflow direct (single-user stack, no auth app)",
}
ROUTES = tuple(LABELS)
WARM_UP = 3  # calls per client before timing: the connection, and first-call costs


def bench_users(count: int) -> tuple[str, ...]:
    return tuple(f"bench{i:02d}" for i in range(1, count + 1))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --- the Hub and the team stack -------------------------------------------------------------
class TimedHub(Hub):
    """The harness's Hub, noting when its proxy is exec'd and when the Hub's API answers through
    the proxy. (Hub.start() also sets users' passwords and checks that they can run the venv:
    harness work that a Hub's own start does not include.)"""

    proxy_exec: float | None = None
    proxy_answered: float | None = None
    api_answered: float | None = None

    def _start_proxy(self, timeout: float) -> None:
        self.proxy_exec = time.monotonic()
        super()._start_proxy(timeout)
        self.proxy_answered = time.monotonic()

    def _start_hub(self, timeout: float) -> None:
        super()._start_hub(timeout)
        self.api_answered = time.monotonic()


@dataclass
class Team:
    hub: TimedHub
    stack: Stack
    settings: Settings
    timings: dict = field(default_factory=dict)


def team_config(state: Path, hub: Hub) -> tuple[str, dict]:
    """The team stack's configuration (the one file the stack and the Hub's configure() read) and its ports."""
    service_port, mlflow_port, metrics_port = free_port(), free_port(), free_port()
    config = (
        f'state_dir = "{state}"\n[mlflow]\nport = {mlflow_port}\n[agent]\nmetrics_port = {metrics_port}\n'
        f'[team]\nhub_api_url = "http://127.0.0.1:{hub.hub_port}/hub/api"\npublic_url = "{hub.base}"\n'
        f'service_port = {service_port}\ndefault_permission = "NO_PERMISSIONS"\n'  # private work, the strict case
    )
    return config, dict(jupyter_port=service_port, mlflow_port=mlflow_port, metrics_port=metrics_port)


@contextlib.contextmanager
def team_running(directory: Path, users: tuple[str, ...]):
    """A Hub and a team stack, timed: the Hub first (its API answering through its proxy), then
    `mlproxy up` until `mlproxy status` says ready (the route through the Hub's proxy works).
    Both stopped on leaving, the Hub first (it stops users' servers)."""
    state = directory / "state"
    config_file = state.parent / f"{state.name}.toml"  # where Stack writes its configuration
    hub = TimedHub(users=users, extra_config=f"import mlproxy_supervisor.hub\nmlproxy_supervisor.hub.configure(c, {str(config_file)!r})\n")
    config, ports = team_config(state, hub)
    stack = Stack(state, config=config, **ports)  # writes the file and makes the state directory configure() needs
    try:
        hub.start(timeout=300)
        began = time.monotonic()
        stack.start(wait=False)
        stack.wait_ready(timeout=300)
        ready = time.monotonic() - began
        timings = {
            "stack_ready_s": round(ready, 3),
            "hub_start_s": round(hub.api_answered - hub.proxy_exec, 3),
            "proxy_start_s": round(hub.proxy_answered - hub.proxy_exec, 3),
        }
        log(f"Hub answering {timings['hub_start_s']:.2f} s after its proxy's exec; team stack READY {ready:.2f} s after `mlproxy up`")
        yield Team(hub, stack, stack.settings, timings)
    finally:
        try:
            hub.stop()
        finally:
            if stack.stop() != 0:
                log(f"the team stack exited with status {stack.process.returncode}")


@contextlib.contextmanager
def single_user_stack(directory: Path):
    """A single-user mlproxy stack (no [team]): Jupyter's /mlflow/ route, MLflow on its socket."""
    jupyter, mlflow, metrics = free_port(), free_port(), free_port()
    stack = Stack(directory / "single", jupyter_port=jupyter, mlflow_port=mlflow, metrics_port=metrics)
    try:
        stack.start(timeout=300)
        yield stack
    finally:
        stack.stop()


# --- 1. start and memory --------------------------------------------------------------------
def spawn_server(hub: Hub, user: str, timeout: float = 300) -> float:
    """Seconds from the spawn request through the Hub's API (what "Start My Server" sends) to the
    Hub's model saying ready: the Hub has then reached the server and added its proxy route."""
    made = hub.admin.post(hub.api(f"users/{user}"), timeout=30)  # the Hub user, before the clock starts
    assert made.status_code in (201, 409), f"creating Hub user {user}: {made.status_code} {made.text}"
    began = time.monotonic()
    answer = hub.admin.post(hub.api(f"users/{user}/server"), timeout=60)
    assert answer.status_code in (201, 202), f"spawning {user}'s server: {answer.status_code} {answer.text}"

    def ready() -> bool:
        model = hub.admin.get(hub.api(f"users/{user}"), timeout=30).json()
        return bool(model.get("servers", {}).get("", {}).get("ready"))

    wait_until(ready, timeout, f"{user}'s server", interval=0.2, details=hub.tails)  # finer than hub.spawn()'s 0.5 s
    took = time.monotonic() - began
    hub.spawn(user)  # returns at once (ready); the harness then tracks the server's processes
    return took


def process_trees(team: Team) -> dict[str, list[int]]:
    """The pids of each component. Users' servers are the Hub's children (LocalProcessSpawner):
    they are told apart by their owner (a bench user, not root) and counted apart."""
    servers: set[int] = set()
    for pid, info in team.hub.processes().items():
        if info["uid"] != 0:
            servers.update(procs.descendants(pid))
    hub = procs.descendants(team.hub.hub.pid) + procs.descendants(team.hub.proxy.pid)
    return {
        "team_stack": procs.descendants(team.stack.process.pid),  # mlproxy up, supervisord, MLflow, the service, the agent
        "hub": [pid for pid in hub if pid not in servers],  # JupyterHub and configurable-http-proxy
        "servers": sorted(servers),
    }


def idle_memory(team: Team, settle: float, samples: int = 3, interval: float = 2.0) -> dict:
    """PSS (and RSS, USS) per component, summed over its process tree, `samples` times at idle; the
    median sample per component. PSS divides shared pages among the processes that map them, so the
    components add up to what they cost together."""
    time.sleep(settle)  # the last server's start-up work (extension loading, first activity report) done
    taken = []
    for index in range(samples):
        if index:
            time.sleep(interval)
        taken.append({name: procs.memory(pids).as_dict() for name, pids in process_trees(team).items()})
    median = {name: sorted((s[name] for s in taken), key=lambda m: m["pss_mb"])[len(taken) // 2] for name in taken[0]}
    return {"samples": taken, "median": median}


def measure_start_and_memory(directory: Path, servers: int, settle: float) -> dict:
    """A fresh Hub and team stack, `servers` users' servers spawned one after the other, memory at idle."""
    users = bench_users(servers)
    with team_running(directory / f"team-{servers}", users) as team:
        spawns = {}
        for user in users:
            spawns[user] = round(spawn_server(team.hub, user), 3)
            log(f"N={servers}: {user}'s server ready in {spawns[user]:.2f} s")
        memory = idle_memory(team, settle)
        pss = memory["median"]
        log(f"N={servers} at idle, PSS: team stack {pss['team_stack']['pss_mb']:.0f} MB, Hub + proxy {pss['hub']['pss_mb']:.0f} MB, "
            f"{servers} servers {pss['servers']['pss_mb']:.0f} MB")
        return {"servers": servers, **team.timings, "spawn_s": spawns, "memory": memory}


# --- 2. logging through the routes ----------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """Where a client sends MLflow's REST paths: `base` + path, over TCP or MLflow's unix socket."""

    name: str
    base: str  # http://host:port/prefix, without the trailing slash
    headers: tuple[dict, ...]  # one per client: its credentials (or, direct to the team's MLflow, its user)
    mlflow_pid: int  # the MLflow that answers, and the processes in between: whose CPU a request costs
    hop_pids: tuple[int, ...] = ()
    unix_socket: str | None = None


class Client:
    """One MLflow client: a keep-alive connection of its own, kept across calls."""

    def __init__(self, route: Route, headers: dict):
        self.route, self.headers = route, headers
        self.prefix = urlsplit(route.base).path.rstrip("/")
        self.connection = local_http.connection(route.base, route.unix_socket, timeout=120)
        self.reconnects = 0

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        sent = {**self.headers, **(headers or {}), **({"Content-Type": "application/json"} if data else {})}
        for attempt in range(2):
            try:
                self.connection.request(method, f"{self.prefix}/{path}", body=data, headers=sent)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed meanwhile: http.client reconnects on
                # the next request. Counted, and a second failure is the caller's error.
                self.connection.close()
                self.reconnects += 1
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


def create_run(route: Route, client_index: int) -> str:
    """An experiment and a run of the client's own (as its user, on the team's routes)."""
    client = Client(route, route.headers[client_index])
    try:
        status, body = client.call("POST", f"{API}/experiments/create", {"name": f"team-bench-{route.name}-{client_index}-{uuid.uuid4().hex[:8]}"})
        assert status == 200, f"{route.name}: experiments/create answered {status} {body[:300]!r}"
        experiment = json.loads(body)["experiment_id"]
        status, body = client.call("POST", f"{API}/runs/create", {"experiment_id": experiment, "start_time": int(time.time() * 1000)})
        assert status == 200, f"{route.name}: runs/create answered {status} {body[:300]!r}"
        return json.loads(body)["run"]["info"]["run_id"]
    finally:
        client.close()


def tree_cpu_seconds(pids: tuple[int, ...]) -> float:
    return sum(procs.cpu_seconds(member) or 0.0 for pid in pids for member in procs.descendants(pid))


def log_round(route: Route, run_ids: list[str], clients: int, calls: int) -> dict:
    """`calls` log-metric POSTs spread over `clients` threads, each on its own connection and run,
    started together; every request's latency, requests per second over the round's wall time, and
    the CPU time per request of MLflow and of the hop (which other work on the machine slows less
    than it slows latency)."""
    latencies: list[float] = []
    errors: list[str] = []
    reconnects = []
    lock = threading.Lock()
    start_together = threading.Barrier(clients + 1, timeout=600)  # a client that died breaks it rather than hangs it

    def client(index: int) -> None:
        session = Client(route, route.headers[index])
        mine, failed = [], []

        def one(step: int) -> int:
            body = {"run_id": run_ids[index], "key": "loss", "value": 1.0 / (step + 1), "timestamp": int(time.time() * 1000), "step": step}
            return session.call("POST", f"{API}/runs/log-metric", body)[0]

        try:
            try:
                for step in range(WARM_UP):
                    one(step)
            except (OSError, http.client.HTTPException) as error:
                failed.append(f"warm-up {type(error).__name__}")
            start_together.wait()
            for step in range(calls // clients):
                began = time.perf_counter()
                try:
                    status = one(WARM_UP + step)
                    if status != 200:
                        failed.append(f"HTTP {status}")
                except (OSError, http.client.HTTPException) as error:
                    failed.append(type(error).__name__)
                mine.append(time.perf_counter() - began)
        finally:
            session.close()
            with lock:
                latencies.extend(mine)
                errors.extend(failed)
                reconnects.append(session.reconnects)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = tree_cpu_seconds((route.mlflow_pid,)), tree_cpu_seconds(route.hop_pids)
    start_together.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    mlflow_cpu, hop_cpu = tree_cpu_seconds((route.mlflow_pid,)) - cpu_before[0], tree_cpu_seconds(route.hop_pids) - cpu_before[1]
    return {
        "p50_ms": _ms(percentile(latencies, 0.5)), "p99_ms": _ms(percentile(latencies, 0.99)), "per_s": round(len(latencies) / wall, 2),
        "mlflow_cpu_ms": round(mlflow_cpu * 1000 / len(latencies), 3),
        "hop_cpu_ms": round(hop_cpu * 1000 / len(latencies), 3) if route.hop_pids else None,
        "requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)), "reconnects": sum(reconnects),
        "latencies_ms": [round(v * 1000, 2) for v in latencies],
    }  # fmt: skip


def routes(team: Team, single: Stack, clients: int) -> dict[str, Route]:
    users = bench_users(clients)
    team_socket, single_socket = str(team.settings.mlflow_socket), str(single.settings.mlflow_socket)
    # Direct to the team's MLflow: the headers the service sends (hub/service.py), so the auth app
    # does the same work (the user's permissions) as behind the service.
    secret = credentials.read_token(team.settings.mlflow_auth_secret)
    as_service = tuple({**caller.headers(user, False, secret), "Host": f"127.0.0.1:{team.settings.mlflow.port}"} for user in users)
    team_mlflow, single_mlflow = team.stack.pid("mlflow"), single.pid("mlflow")
    tokens = tuple({"Authorization": f"Bearer {team.hub.user_token(u)}"} for u in users)
    return {
        "direct": Route("direct", "http://localhost", as_service, team_mlflow, unix_socket=team_socket),
        # The hop: configurable-http-proxy and the service (the Hub is not asked about a token the service has cached)
        "team": Route("team", team.settings.team_url.rstrip("/"), tokens, team_mlflow, (team.hub.proxy.pid, team.stack.pid("service"))),
        "single": Route("single", f"{single.base}/mlflow", tuple({"Authorization": f"token {single.token}"} for _ in users), single_mlflow, (single.pid("jupyter"),)),
        "single_direct": Route("single_direct", "http://localhost", tuple({} for _ in users), single_mlflow, unix_socket=single_socket),
    }


def _median_rounds(rounds: list[dict]) -> dict:
    hop = [r["hop_cpu_ms"] for r in rounds if r["hop_cpu_ms"] is not None]
    return {
        **{key: round(statistics.median(r[key] for r in rounds), 3) for key in ("p50_ms", "p99_ms", "per_s", "mlflow_cpu_ms")},
        "hop_cpu_ms": round(statistics.median(hop), 3) if hop else None,
        "runs": len(rounds), "requests": sum(r["requests"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
        "error_kinds": sorted({kind for r in rounds for kind in r["error_kinds"]}), "reconnects": sum(r["reconnects"] for r in rounds),
    }  # fmt: skip


def measure_logging(targets: dict[str, Route], levels: list[int], runs: int, calls: int) -> dict:
    """Per concurrency and route: every round, and the medians over `runs` rounds, routes interleaved
    within each run (a drift of the machine's load touches every route alike)."""
    run_ids = {name: [create_run(route, i) for i in range(max(levels))] for name, route in targets.items()}
    results = {}
    for clients in levels:
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(runs):
            for name, route in targets.items():
                rounds[name].append(log_round(route, run_ids[name], clients, calls))
        results[f"c={clients}"] = {name: {"median": _median_rounds(r), "rounds": r} for name, r in rounds.items()}
        log(f"log-metric c={clients}: " + ", ".join(
            f"{name} {v['median']['per_s']:.0f}/s p50 {v['median']['p50_ms']:.1f} ms p99 {v['median']['p99_ms']:.1f} ms"
            for name, v in results[f"c={clients}"].items()))  # fmt: skip
    return results


# --- 3. the Hub's token check ---------------------------------------------------------------
def new_token(hub: Hub, user: str) -> str:
    answer = hub.admin.post(hub.api(f"users/{user}/tokens"), json={"note": "benchmarks/team.py, used once"}, timeout=60)
    assert answer.status_code == 201, f"token for {user}: {answer.status_code} {answer.text}"
    return answer.json()["token"]


def measure_token_check(team: Team, runs: int, tokens: int) -> dict:
    """The service asks the Hub about a token the first time it sees it (GET /hub/api/user) and
    caches the answer (HubOAuth, 5 minutes). One keep-alive connection through the Hub's proxy,
    alternating: a token never seen before, then the token the service saw just before; the same
    user, so MLflow's side is the same. Also the Hub's CPU time per new token over the round."""
    user = "bench01"
    cached_token = team.hub.user_token(user)
    route = Route("team", team.settings.team_url.rstrip("/"), ({"Authorization": f"Bearer {cached_token}"},), team.stack.pid("mlflow"))
    rounds = []
    for _ in range(runs):
        fresh = [new_token(team.hub, user) for _ in range(tokens)]  # up front: their making is not timed
        client = Client(route, route.headers[0])
        cached, uncached, errors = [], [], 0
        try:
            for _ in range(WARM_UP):
                client.call("GET", READ)
            hub_cpu = procs.cpu_seconds(team.hub.hub.pid)
            for token in fresh:
                for kind, headers in (("uncached", {"Authorization": f"Bearer {token}"}), ("cached", None)):
                    began = time.perf_counter()
                    status, _ = client.call("GET", READ, headers=headers)
                    (uncached if kind == "uncached" else cached).append(time.perf_counter() - began)
                    errors += status != 200
            hub_cpu = procs.cpu_seconds(team.hub.hub.pid) - hub_cpu
        finally:
            client.close()
        rounds.append({
            "cached_p50_ms": _ms(percentile(cached, 0.5)), "uncached_p50_ms": _ms(percentile(uncached, 0.5)),
            "hub_cpu_ms_per_new_token": round(hub_cpu * 1000 / tokens, 2), "errors": errors,
            "cached_ms": [round(v * 1000, 2) for v in cached], "uncached_ms": [round(v * 1000, 2) for v in uncached],
        })  # fmt: skip
        log(f"token check: p50 cached {rounds[-1]['cached_p50_ms']:.1f} ms, never seen {rounds[-1]['uncached_p50_ms']:.1f} ms")
    median = {key: round(statistics.median(r[key] for r in rounds), 3) for key in ("cached_p50_ms", "uncached_p50_ms", "hub_cpu_ms_per_new_token")}
    median["share"] = round((median["uncached_p50_ms"] - median["cached_p50_ms"]) / median["uncached_p50_ms"], 3)
    median["errors"] = sum(r["errors"] for r in rounds)
    return {"tokens_per_run": tokens, "median": median, "rounds": rounds}


# --- results --------------------------------------------------------------------------------
def summarize(memory: list[dict], logging: dict) -> dict:
    starts = {
        "stack_ready_s": [m["stack_ready_s"] for m in memory],
        "hub_start_s": [m["hub_start_s"] for m in memory],
    }
    ratios = {}
    for level, by_route in logging.items():
        direct = by_route["direct"]["median"]
        ratios[level] = {
            name: {"per_s_of_direct": round(v["median"]["per_s"] / direct["per_s"], 3), "p50_of_direct": round(v["median"]["p50_ms"] / direct["p50_ms"], 3)}
            for name, v in by_route.items()
        }
    return {"starts": {k: {"median": statistics.median(v), "values": v} for k, v in starts.items()}, "of_direct": ratios}


def _spawns(row: dict) -> str:
    values = list(row["spawn_s"].values())
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def markdown(results: dict) -> str:
    conditions, summary = results["conditions"], results["summary"]
    quiet = conditions["machine_before"]
    lines = [
        f"{'**Smoke run, not quotable.** ' if conditions['smoke'] else ''}Run of {conditions['date']} at commit {conditions['commit']}, "
        f"{conditions['machine']}, load average {conditions['load_before']} before (other work took {quiet['machine_busy']:.0%} of the CPUs "
        f"in the {quiet['seconds']:.0f} s before the run; during the logging runs {results['logging_contention']['others_busy']:.0%}), "
        f"{conditions['minutes']:.0f} min. Reproduce with:",
        "",
        f"    {conditions['command']}",
        "",
        "Start and memory, for N users' servers (LocalProcessSpawner, real Unix users). Hub start: configurable-http-proxy's exec to the "
        "Hub's API answering through it; stack READY: `mlproxy up` to `mlproxy status` ready (MLflow answers through the Hub's proxy), "
        "the Hub already up; spawn: the Hub's API request to its model saying ready, servers spawned one after the other. "
        "PSS at idle (MB; smaps_rollup summed over each process tree, the median of 3 samples), processes in brackets:",
        "",
        "| N | Hub + proxy start (s) | team stack READY (s) | spawn median / max (s) | team stack | Hub + proxy | N servers | per server | total |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["memory"]:
        pss = row["memory"]["median"]
        total = sum(pss[k]["pss_mb"] for k in ("team_stack", "hub", "servers"))
        cells = [f"{pss[k]['pss_mb']:.0f} ({pss[k]['processes']})" for k in ("team_stack", "hub", "servers")]
        lines.append(f"| {row['servers']} | {row['hub_start_s']:.2f} | {row['stack_ready_s']:.2f} | {_spawns(row)} | {' | '.join(cells)} | "
                     f"{pss['servers']['pss_mb'] / row['servers']:.0f} | {total:.0f} |")
    lines += ["", f"![PSS by component against N]({MEMORY_PLOT.relative_to(DOC.parent).as_posix()})", ""]
    lines += [
        f"Logging: `POST {API}/runs/log-metric`, c clients (threads, each with its own keep-alive connection and run), "
        f"{conditions['calls']} calls per round, median of {conditions['runs']} rounds with the routes interleaved; "
        "ratios to MLflow direct on the team stack's socket (with the header the service sets). CPU time per request (ms; "
        "/proc/PID/stat over each round): MLflow's, and the hop's (configurable-http-proxy and the service on the team route, "
        "Jupyter on the single-user one):",
        "",
        "| c | route | requests/s | p50 (ms) | p99 (ms) | requests/s of direct | p50 of direct | MLflow CPU | hop CPU | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level, by_route in results["logging"].items():
        for name, value in by_route.items():
            m, ratio = value["median"], summary["of_direct"][level][name]
            errors = f"**{m['errors']}** ({', '.join(m['error_kinds'])})" if m["errors"] else "0"
            hop = "-" if m["hop_cpu_ms"] is None else f"{m['hop_cpu_ms']:.2f}"
            lines.append(f"| {level.removeprefix('c=')} | {LABELS[name]} | {m['per_s']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{ratio['per_s_of_direct']:.0%} | ×{ratio['p50_of_direct']:.2f} | {m['mlflow_cpu_ms']:.2f} | {hop} | {errors} |")
    lines += ["", f"![Latency and throughput by route and clients]({LATENCY_PLOT.relative_to(DOC.parent).as_posix()})", ""]
    token = results["token_check"]["median"]
    lines += [
        f"The Hub's token check: `GET {READ}` through the team route, one keep-alive connection, alternating a token the service "
        f"never saw (made up front, used once: the service asks the Hub) with the token it saw just before (its cache); "
        f"{results['token_check']['tokens_per_run']} of each per run, median of {conditions['runs']} runs:",
        "",
        "| p50 cached token (ms) | p50 new token (ms) | share of the token check: (new - cached) / new | the Hub's CPU per new token (ms) | errors |",
        "|---:|---:|---:|---:|---:|",
        f"| {token['cached_p50_ms']:.2f} | {token['uncached_p50_ms']:.2f} | {token['share']:.0%} | {token['hub_cpu_ms_per_new_token']:.1f} | {token['errors']} |",
    ]
    return "\n".join(lines)


def plot_memory(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["memory"]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    xs = [str(r["servers"]) for r in rows]
    bottom = [0.0] * len(rows)
    for key, label in (("team_stack", "team stack (mlproxy up and below)"), ("hub", "JupyterHub + configurable-http-proxy"), ("servers", "users' servers")):
        values = [r["memory"]["median"][key]["pss_mb"] for r in rows]
        axis.bar(xs, values, 0.6, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, total in zip(xs, bottom, strict=True):
        axis.text(x, total, f"{total:.0f} MB", ha="center", va="bottom", fontsize=8)
    axis.set_xlabel("N users' servers running")
    axis.set_ylabel("PSS at idle (MB)")
    axis.legend(fontsize=8, loc="upper left")
    axis.set_title("Team mode: memory by component" + (" (smoke run)" if results["conditions"]["smoke"] else ""))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def plot_latency(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(results["logging"])
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(ROUTES)
    for offset, name in enumerate(ROUTES):
        xs = [i + (offset - (len(ROUTES) - 1) / 2) * width for i in range(len(levels))]
        medians = [results["logging"][level][name]["median"] for level in levels]
        bars = latency.bar(xs, [m["p50_ms"] for m in medians], width, label=LABELS[name].replace("`", ""))
        # p99 as a tick above each bar, in the bar's colour
        latency.scatter(xs, [m["p99_ms"] for m in medians], marker="_", s=200, color=bars.patches[0].get_facecolor())
        throughput.bar(xs, [m["per_s"] for m in medians], width)
    for axis in (latency, throughput):
        axis.set_xticks(range(len(levels)), [f"c = {level.removeprefix('c=')}" for level in levels])
    latency.set_ylabel("ms: p50 (bar), p99 (tick)")
    latency.set_yscale("log")
    throughput.set_ylabel("requests/s")
    latency.set_title("log-metric latency")
    throughput.set_title("log-metric throughput")
    figure.legend(*latency.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    figure.suptitle("Team mode: logging by route" + (" (smoke run)" if results["conditions"]["smoke"] else ""))
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


# --- the run --------------------------------------------------------------------------------
def machine_before(seconds: float) -> dict:
    """How busy the machine is before this run starts anything: all of it is other work."""
    contention = procs.Contention()
    time.sleep(seconds)
    return {"seconds": seconds, **contention.finish(), **procs.calibrate()}


def remove_users(created: list[str]) -> None:
    """userdel -r the bench users this run made (never users that were there before)."""
    for user in created:
        result = subprocess.run(["userdel", "-r", user], capture_output=True, text=True, check=False)
        if result.returncode not in (0, 12):  # 12: the home directory could not be removed (gone)
            log(f"userdel -r {user}: {result.stderr.strip()}")


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def _levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=_levels, default=None, help="numbers N of users' servers (default 2,8,16)")
    parser.add_argument("--clients", type=_levels, default=None, help="concurrent clients c (default 1,4,8)")
    parser.add_argument("--calls", type=int, default=None, help="log-metric calls per round, split among the clients (default 600)")
    parser.add_argument("--runs", type=int, default=None, help="rounds of each measurement, routes interleaved (default 3)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per run of the token check (default 200)")
    parser.add_argument("--smoke", action="store_true", help="N=2, c=1, 40 calls, 1 run, 10 tokens; writes results/quick.team.*, leaves the docs alone")
    args = parser.parse_args()
    defaults = dict(users=[2], clients=[1], calls=40, runs=1, tokens=10) if args.smoke else dict(users=[2, 8, 16], clients=[1, 4, 8], calls=600, runs=3, tokens=200)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    missing = missing_requirements()
    if missing:
        raise SystemExit(f"benchmarks.team needs {'; '.join(missing)}. {SETUP_HINT}")
    began, load_before = time.monotonic(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    quiet = machine_before(3 if args.smoke else 15)
    log(f"before the run: load {load_before}, other work took {quiet['machine_busy']:.0%} of the CPUs")

    everyone = bench_users(max(*args.users, *args.clients))
    created = []
    for user in everyone:
        try:
            pwd.getpwnam(user)
        except KeyError:
            created.append(user)  # the harness makes it (useradd); this run removes it
    try:
        with tempfile.TemporaryDirectory(prefix="mlproxy-team-bench-", dir="/var/tmp") as scratch_dir:
            scratch = Path(scratch_dir)
            memory = []
            for servers in args.users:
                log(f"start and memory, N={servers}")
                memory.append(measure_start_and_memory(scratch, servers, settle=3 if args.smoke else 15))
            log(f"logging: c={args.clients}, {args.runs} runs of {args.calls} calls; token check: {args.runs} runs of {args.tokens} tokens")
            with team_running(scratch / "team-load", bench_users(max(args.clients))) as team, single_user_stack(scratch) as single:
                contention = procs.Contention(lambda: [pid for pids in process_trees(team).values() for pid in pids] + procs.descendants(single.process.pid))
                logging = measure_logging(routes(team, single, max(args.clients)), args.clients, args.runs, args.calls)
                logging_contention = contention.finish()
                token_check = measure_token_check(team, args.runs, args.tokens)
    finally:
        remove_users(created)

    command = "python -m benchmarks.team" + (" --smoke" if args.smoke else "")
    if not args.smoke:
        command += (f" --users {','.join(map(str, args.users))} --clients {','.join(map(str, args.clients))} --calls {args.calls}"
                    f" --runs {args.runs} --tokens {args.tokens}")  # fmt: skip
    results = {
        "conditions": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(), "smoke": args.smoke, "command": command,
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores", "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.monotonic() - began) / 60,
            "machine_before": quiet, "calls": args.calls, "runs": args.runs, "users_created": created,
        },
        "memory": memory,
        "logging": logging,
        "logging_contention": logging_contention,
        "token_check": token_check,
    }  # fmt: skip
    results["summary"] = summarize(memory, logging)
    stem = "quick.team" if args.smoke else "team"
    text = markdown(results)
    save_results(RESULTS, stem, results, text)
    plot_memory(results, RESULTS / "quick.team-memory.png" if args.smoke else MEMORY_PLOT)
    plot_latency(results, RESULTS / "quick.team-latency.png" if args.smoke else LATENCY_PLOT)
    if not args.smoke:
        rewrite_between(DOC, BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
