"""`mlproxy doctor`: find what keeps MLflow from working behind Jupyter, and say how to fix it.

Each check looks at one known way this goes wrong (the proxy extension not loaded, a named server
with absolute_url, MLflow not listening, a wrong token, MLflow's Host or Origin refusal, a port
held by someone else, a config error). A stopped stack gets the checks that make sense without it
(those `mlproxy up` makes before starting).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import socket
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

from . import credentials, local_http, preflight, procfs, rpc
from .config import RESOLVED_ENV, ConfigError, Settings
from .programs import SERVICE_READINESS
from .redact import redact_uri
from .rpc import Supervisor
from .running import locate_stack

TIMEOUT = 5.0


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def render(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        text = f"[{mark}] {self.check}" + (f": {self.detail}" if self.detail else "")
        return text + (f"\n       fix: {self.fix}" if self.fix and not self.ok else "")


def _get(url: str, token: str | None = None, headers: dict | None = None, method: str = "GET", body: bytes | None = None,
         unix_socket: Path | None = None) -> tuple[int, bytes]:  # fmt: skip
    """(status, body) or (0, error text) when nothing answers."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"token {token}"
    try:
        return local_http.fetch(url, TIMEOUT, unix_socket, method, all_headers, body, limit=2000)
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error).encode()


def check_extension_installed() -> Finding:
    missing = [name for name in ("jupyter_server_proxy", "notebook") if importlib.util.find_spec(name) is None]
    if missing:
        return Finding("Jupyter extensions installed", False, f"{', '.join(missing)} not installed",
                       "pip install -c constraints.txt jupyter-server-proxy notebook (or reinstall mlproxy)")
    return Finding("Jupyter extensions installed", True, "jupyter-server-proxy and notebook present")


def check_named_server_entry() -> Finding:
    """The `mlflow` named server must strip its prefix: MLflow serves from /, not /mlflow/."""
    registered = [ep for ep in entry_points(group="jupyter_serverproxy_servers") if ep.name == "mlflow"]
    if not registered:
        return Finding("named server 'mlflow' registered", False, "no jupyter_serverproxy_servers entry point 'mlflow'",
                       "reinstall mlproxy in the environment Jupyter runs from (pip install -c constraints.txt .)")
    try:
        config = registered[0].load()()
    except Exception as error:
        return Finding("named server 'mlflow' registered", False, f"entry point fails: {error}", "run `mlproxy config check`")
    if config.get("absolute_url"):
        return Finding("named server 'mlflow' strips /mlflow/", False, "absolute_url is True: MLflow would get /mlflow/... and answer 404",
                       "set absolute_url False for the 'mlflow' server")
    return Finding("named server 'mlflow' strips /mlflow/", True, f"port {config['port']}, absolute_url False")


def check_token(settings: Settings) -> tuple[Finding, str | None]:
    if not settings.jupyter.token_file.exists():
        return Finding("token file", True, f"{settings.jupyter.token_file} not created yet (`mlproxy up` generates it)"), None
    try:
        return Finding("token file", True, str(settings.jupyter.token_file)), credentials.read_token(settings.jupyter.token_file)
    except credentials.CredentialError as error:
        return Finding("token file", False, str(error), "run mlproxy as the user that owns the file (sudo), or delete it to generate a new token"), None


# Where a database server listens unless its URI names a port (SQLAlchemy's dialect names).
DATABASE_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}


def check_database(settings: Settings) -> list[Finding]:
    """A store on a database server: can this machine reach it? Named (password masked), since
    an unreachable database is what MLflow's failures then say only deep in its log."""
    uri = settings.mlflow.backend_store_uri
    parts = urlsplit(uri)
    dialect = parts.scheme.split("+", 1)[0]
    if dialect not in DATABASE_PORTS:
        return []  # SQLite: the schema and directory checks cover it
    shown = redact_uri(uri)
    try:
        host, port = parts.hostname or "localhost", parts.port or DATABASE_PORTS[dialect]
    except ValueError as error:  # a port that is not a number
        return [Finding("MLflow's database", False, f"{shown}: {error}", "fix mlflow.backend_store_uri")]
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError as error:
        return [Finding("MLflow's database", False, f"cannot connect to {shown} ({host}:{port}): {error.strerror or error}",
                        f"start the database server on {host}:{port}, or fix mlflow.backend_store_uri")]  # fmt: skip
    return [Finding("MLflow's database", True, f"{host}:{port} accepts connections ({shown})")]


def team_checks(settings: Settings) -> list[Finding]:
    """Team mode: the service answers, and MLflow answers through the Hub's proxy with the
    service's own Hub token (what users' requests go through)."""
    findings = []
    status, _ = _get(f"{settings.service_url.rstrip('/')}{SERVICE_READINESS}")
    findings.append(Finding("Hub service reaches MLflow", status == 200, f"{settings.service_url}: HTTP {status or 'no answer'}",
                            "see `mlproxy status` and the service and mlflow logs"))  # fmt: skip
    try:
        token = credentials.read_token(settings.team.service_token_file)
    except credentials.CredentialError as error:
        return [*findings, Finding("service token", False, str(error), "run mlproxy as the user that owns the state directory")]
    status, body = _get(f"{settings.team_url}api/2.0/mlflow/experiments/search?max_results=1", token)
    findings.append(Finding("MLflow through the Hub's proxy", status == 200, f"{settings.team_url}: HTTP {status or body.decode(errors='replace')}",
                            "start the Hub with mlproxy_supervisor.hub.configure(c) in its configuration (docs/team.md), "
                            "and check team.public_url and team.hub_api_url"))  # fmt: skip
    return findings


def live_checks(settings: Settings, token: str | None) -> list[Finding]:
    findings = []
    mlflow, jupyter, port = settings.mlflow_url, settings.jupyter_local_url, settings.mlflow.port
    where = f"unix socket {settings.mlflow_socket}" if settings.mlflow_socket else mlflow
    status, body = _get(f"{mlflow}/health", unix_socket=settings.mlflow_socket)
    if status != 200:
        findings.append(Finding("MLflow listening", False, f"{where}, /health: {status or body.decode()}",
                                "see `mlproxy status` (last error and log lines) and the mlflow log"))
    else:
        findings.append(Finding("MLflow listening", True, f"{where} answers /health"))
    status, _ = _get(f"{jupyter}/api")
    if status != 200:
        findings.append(Finding("Jupyter listening", False, f"{jupyter}/api: {status or 'no answer'}", "see `mlproxy status` and the jupyter log"))
        return findings
    if token is None:
        return findings
    status, _ = _get(f"{jupyter}/api/status", token)
    if status != 200:
        findings.append(Finding("Jupyter accepts the token", False, f"HTTP {status} with the token from {settings.jupyter.token_file}",
                                "Jupyter runs with another token: restart it with `mlproxy ctl restart jupyter`"))
        return findings
    findings.append(Finding("Jupyter accepts the token", True))
    generic, _ = _get(f"{jupyter}/proxy/{port}/health", token)
    if generic == 404:
        findings.append(Finding("jupyter-server-proxy loaded", False, f"/proxy/{port}/health answers 404",
                                "enable the extension: jupyter server extension enable --sys-prefix jupyter_server_proxy"))
    else:
        findings.append(Finding("jupyter-server-proxy loaded", generic == 200, f"/proxy/{port}/health: HTTP {generic}"))
    named, body = _get(f"{jupyter}/mlflow/health", token)
    if named == 404 and generic == 200:
        findings.append(Finding("/mlflow/ route", False, "404: the named server is missing or sends /mlflow/... to MLflow (absolute_url)",
                                "enable mlproxy's server extension: jupyter server extension enable --sys-prefix mlproxy_supervisor.jupyter"))
    else:
        findings.append(Finding("/mlflow/ route", named == 200, f"HTTP {named}"))
    # MLflow's own checks refuse any Host but localhost and writes from other origins: mlproxy's
    # handler presents proxied requests as loopback ones. A 403 here means it is not in front.
    foreign = {"Host": f"mlproxy-doctor.example:{settings.jupyter.port}"}
    status, body = _get(f"{jupyter}/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=1", token, foreign)
    host_ok = status == 200
    findings.append(Finding("MLflow reachable by any hostname", host_ok, f"HTTP {status}" + (f" {body[:80].decode(errors='replace')}" if not host_ok else ""),
                            "MLflow refuses the Host header: enable mlproxy's server extension (mlproxy_supervisor.jupyter)"))
    origin = {**foreign, "Origin": f"http://{foreign['Host']}", "Content-Type": "application/json"}
    status, body = _get(f"{jupyter}/mlflow/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=x", token, origin)
    origin_ok = status in (200, 404)  # 404: MLflow answered that there is no experiment "x"
    findings.append(Finding("same-origin requests accepted", origin_ok, "MLflow answered" if origin_ok else f"HTTP {status}",
                            "MLflow refuses the Origin: enable mlproxy's server extension (mlproxy_supervisor.jupyter)"))
    return findings


def _listeners_belong_to_stack(settings: Settings, supervisor: Supervisor) -> list[Finding]:
    processes = supervisor.processes()
    findings = []
    listeners = [("jupyter", settings.jupyter.port)] + ([("mlflow", settings.mlflow.port)] if settings.mlflow_socket is None else [])
    for name, port in listeners:
        holders = procfs.listening_pids(port)
        ours = processes.get(name)
        if holders and ours and ours.pid not in holders and not any(procfs.is_descendant(pid, ours.pid) for pid in holders):
            findings.append(Finding(f"port {port} held by this stack's {name}", False, f"held by {preflight.describe_port_owner(port)}",
                                    f"stop that process, or set {name}.port to a free port"))
        else:
            findings.append(Finding(f"port {port} held by this stack's {name}", bool(holders), "" if holders else "nothing listens"))
    return findings


def diagnose(config_file: Path | None) -> list[Finding]:
    try:
        settings = locate_stack(config_file)
    except ConfigError as error:
        return [Finding("configuration", False, str(error), "edit the file or variable named above; `mlproxy config check` re-checks")]
    if settings.resolved_from is not None:
        os.environ[RESOLVED_ENV] = str(settings.resolved_from)  # as Jupyter's extension finds it
    findings = [Finding("configuration", True, settings.source), check_extension_installed(), check_named_server_entry()]
    token_finding, token = check_token(settings)
    findings.append(token_finding)
    supervisor = Supervisor(settings.socket_path, timeout=3)
    if not rpc.answers(settings.socket_path):
        findings.append(Finding("stack running", False, f"no supervisord on {settings.socket_path}", "start it: `mlproxy up` or `systemctl start mlproxy`"))
        problems = preflight.check_dependencies(settings) + preflight.check_ports(settings) + preflight.check_schema(settings)
        findings += [Finding("ready to start", False, problem.what, problem.fix) for problem in problems]
        if not problems:
            findings.append(Finding("ready to start", True, "ports free, dependencies present, schema current"))
        return findings + check_database(settings)
    findings.append(Finding("stack running", True, f"supervisord pid {supervisor.pid()}"))
    findings += check_database(settings)
    if settings.team_mode:
        return findings + team_checks(settings)
    findings += _listeners_belong_to_stack(settings, supervisor)
    findings += live_checks(settings, token)
    return findings


def run(config_file: Path | None) -> int:
    findings = diagnose(config_file)
    for finding in findings:
        print(finding.render())
    failed = [f for f in findings if not f.ok]
    print(f"\n{len(findings) - len(failed)} ok, {len(failed)} problem(s)")
    return 1 if failed else 0
