"""Checks made before anything starts, each with what is wrong and how to fix it.

`mlproxy up` refuses to start on any problem found here, so a bad input never leaves a
half-started stack behind; `mlproxy doctor` runs the same checks on a running or stopped stack.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shlex
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import procfs, rpc
from .config import ENV_PREFIX, Settings
from .console import started_by_systemd
from .files import current_user
from .store import schema

REQUIRED_MODULES = {
    "mlflow": "mlflow",
    "uvicorn": "uvicorn",
    "notebook": "notebook",
    "jupyter_server": "jupyter-server",
    "jupyter_server_proxy": "jupyter-server-proxy",
    "supervisor": "supervisor",
}
# SQLAlchemy's driver name -> (module to import, package to install), where they differ.
DRIVER_MODULES = {
    "psycopg": ("psycopg", "psycopg[binary]"),
    "psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysqldb": ("MySQLdb", "mysqlclient"),
    "pysqlite": ("sqlite3", "(part of Python)"),
}
POSTGRES_DRIVERS = ("psycopg", "psycopg2")  # what mlproxy's `postgres` extra provides (psycopg)


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str
    # True when the cause may go away by itself (a port still held by a process that is ending,
    # another instance stopping): worth a retry. Otherwise a person must act (exits.EXIT_CONFIG).
    may_pass: bool = False

    def __str__(self) -> str:
        return f"{self.what}\n    fix: {self.fix}"


def as_this_user() -> str:
    """The prefix that runs a printed command as the stack's user, for whoever reads it. Under
    systemd that is an operator (often root) reading the journal: run as root, the command would
    leave root-owned files in the service's data directory. runuser is util-linux, on every
    Debian; sudo is not."""
    if started_by_systemd() and os.geteuid() != 0:
        return f"runuser -u {current_user()} -- "
    return ""


# Team mode's: the Hub service's login (jupyterhub.services.auth) and MLflow's auth app (Flask-WTF).
TEAM_MODULES = {"jupyterhub": "jupyterhub", "flask_wtf": "Flask-WTF"}


def check_dependencies(settings: Settings) -> list[Problem]:
    problems = []
    for module, package in TEAM_MODULES.items() if settings.team_mode else ():
        if importlib.util.find_spec(module) is None:
            problems.append(
                Problem(f"team mode needs {package}, which is not installed in {sys.prefix}",
                        "in your mlproxy checkout: pip install -c constraints.txt '.[team]'")
            )
    for module, package in REQUIRED_MODULES.items():
        if importlib.util.find_spec(module) is None:
            problems.append(
                Problem(f"{package} is not installed in {sys.prefix}",
                        f"pip install -c constraints.txt {package}  (or reinstall mlproxy)")
            )
    driver = _database_driver(settings.mlflow.backend_store_uri)
    if driver is not None:
        module, package = DRIVER_MODULES.get(driver, (driver, driver))
        if importlib.util.find_spec(module) is None:
            fix = f"pip install {shlex.quote(package)}"
            if driver in POSTGRES_DRIVERS:  # the tested version: the extra, with the pins, from a checkout
                fix = f"in your mlproxy checkout: pip install -c constraints.txt '.[postgres]'  (or {fix})"
            problems.append(
                Problem(f"mlflow.backend_store_uri needs the database driver {module}, which is not installed", fix)
            )
    return problems


def _database_driver(uri: str) -> str | None:
    """The DBAPI driver SQLAlchemy will load for this URI (postgresql:// means psycopg 3 on
    SQLAlchemy 2.1, psycopg2 before), without importing it."""
    if uri.startswith("sqlite:"):
        return None  # Python's own sqlite3; importing SQLAlchemy to say so costs `up` 0.12 s
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return make_url(uri).get_dialect().driver
    except (ArgumentError, NoSuchModuleError):
        return None


def _writable_directory(path: Path, key: str, mode: int = 0o755) -> Problem | None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mlproxy-write-test-"):
            pass
    except OSError as error:
        elsewhere = f"set {key} in the mlproxy config to a directory you own"
        if error.errno in (errno.ENOTDIR, errno.EEXIST):  # the path, or a parent, is a file
            fix = f"move the file away, or {elsewhere}"
        elif error.errno == errno.EROFS:
            fix = f"{elsewhere}, on a writable file system"
        elif (kind := kernel_filesystem(path)) is not None:  # /proc, /sys: no owner can fix that
            fix = f"{path} is on {kind}, a kernel file system that keeps no data: {elsewhere}, on an ordinary file system"
        elif _owned_by_someone_else(path):
            fix = f"chown {current_user()} {path} (or {elsewhere})"
        else:
            fix = f"{elsewhere}, on an ordinary writable file system"
        return Problem(f"{key} {path} is not writable by user {current_user()}: {error.strerror}", fix)
    return None


# File systems the kernel makes up (its state, its devices): nothing can keep data there.
KERNEL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc", "efivarfs",
})  # fmt: skip


def kernel_filesystem(path: Path) -> str | None:
    """The kernel file system `path` would be on (its type, e.g. "proc"), if it is on one."""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(path.absolute())
    on = []
    for _, point, kind, *_ in mounts:
        point = point.replace("\\040", " ")  # a space in a mount point
        if point == "/" or target == point or target.startswith(point + "/"):
            on.append((len(point), kind))
    kind = max(on)[1] if on else None  # the longest mount point that holds the path
    return kind if kind in KERNEL_FILESYSTEMS else None


def _owned_by_someone_else(path: Path) -> bool:
    """Whether `path` (or, when it does not exist yet, its nearest existing parent) belongs to
    another user: then chown is the fix."""
    existing = next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)
    try:
        return existing is not None and existing.stat().st_uid != os.geteuid()
    except OSError:
        return False


def check_state_dir_parent(settings: Settings) -> list[Problem]:
    """A state_dir whose parent does not exist is most likely a typo (/srv/mlporxy/state): making
    it whole would start an empty store with a new token, and the user's runs would seem gone.
    Only the default location is made with its parents."""
    state = settings.state_dir
    if state.exists() or state.parent.is_dir() or settings.state_dir_is_default:
        return []
    missing = next(parent for parent in reversed(state.parents) if not parent.exists())
    return [
        Problem(
            f"state_dir {state} does not exist, and neither does {missing} ({settings.source}); "
            "mlproxy does not create a state directory's parents: a typo there would start an empty store",
            f"correct state_dir (MLPROXY_STATE_DIR) if it is mistyped; to keep the data at this new place, "
            f"create its parent first: mkdir -p {state.parent}",
        )
    ]


def writable_directories(settings: Settings) -> list[tuple[Path, str]]:
    """Every directory the stack writes to, with the setting that puts it there; the state
    directory first. Checked here before a start, and kept writable by the systemd unit."""
    return [
        (settings.state_dir, "state_dir"),
        (settings.runtime_dir, "runtime_dir"),
        (settings.log_dir, "log_dir"),
        (settings.jupyter.root_dir, "jupyter.root_dir"),
        *((store.path, store.key) for store in settings.local_stores),
    ]


def check_directories(settings: Settings) -> list[Problem]:
    problems = check_state_dir_parent(settings)
    if problems:
        return problems
    unusable = []
    for path, key in writable_directories(settings):
        if any(path == bad or bad in path.parents for bad in unusable):
            continue  # inside a directory already reported: one cause, one message
        problem = _writable_directory(path, key)
        if problem is not None:
            problems.append(problem)
            unusable.append(path)
    if problems:
        return problems  # the database may sit in a directory we cannot even look into
    settings.runtime_dir.chmod(0o700)  # the supervisord socket and the status live here
    database = settings.sqlite_database
    if database is not None and database.exists() and not os.access(database, os.R_OK | os.W_OK):
        problems.append(
            Problem(f"the MLflow database {database} is not readable and writable by user {current_user()}",
                    f"chown {current_user()} {database}")
        )
    return problems


def describe_port_owner(port: int) -> str:
    owners = []
    for pid in procfs.listening_pids(port):
        command = procfs.command_line(pid)
        if command is not None:
            owners.append(f"pid {pid} ({command[:80]})")
    return ", ".join(owners) or "another process"


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port (None: it could)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def how_to_set(key: str, value: object) -> str:
    """How a person sets one key: in the config file, or with its MLPROXY_* variable."""
    section, _, name = key.rpartition(".")
    where = f"[{section}] {name} = {value}" if section else f"{name} = {value}"
    return f"`{where}` in mlproxy.toml, or {ENV_PREFIX}{key.upper().replace('.', '__')}={value}"


def port_problem(host: str, port: int, key: str) -> Problem | None:
    error = _bind_error(host, port)
    if error is None:
        return None
    free = next((other for other in range(port + 1, min(port + 100, 65536)) if _bind_error(host, other) is None), None)
    choose = f"choose another port: {how_to_set(key, free or '<port>')}"
    if error.errno == errno.EADDRINUSE:
        return Problem(
            f"port {port} ({key}) on {host} is already in use by {describe_port_owner(port)}",
            f"stop that process, or {choose}" + (f" ({free} is free now)" if free else ""),
            may_pass=True,
        )
    return Problem(f"cannot bind {host}:{port} ({key}): {error.strerror}", choose, may_pass=True)


def check_ports(settings: Settings) -> list[Problem]:
    if settings.team_mode:
        ports = [("127.0.0.1", settings.team.service_port, "team.service_port")]
    else:
        ports = [(settings.jupyter.ip, settings.jupyter.port, "jupyter.port")]
    if settings.mlflow_socket is None:  # on a socket, mlflow.port only names the route
        ports.append((settings.mlflow.host, settings.mlflow.port, "mlflow.port"))
    if settings.agent.metrics_port:
        ports.append(("127.0.0.1", settings.agent.metrics_port, "agent.metrics_port"))
    return [p for host, port, key in ports if (p := port_problem(host, port, key))]


def check_not_running(settings: Settings) -> list[Problem]:
    """A live supervisord on our socket means the stack is up; a dead socket file is removed."""
    if not rpc.answers(settings.socket_path):
        settings.socket_path.unlink(missing_ok=True)  # left by a crash: nothing listens on it
        return []
    return [
        Problem(f"mlproxy is already running (supervisord socket {settings.socket_path})",
                "use `mlproxy status`, or stop it first (`mlproxy stop`, or `systemctl stop mlproxy` under systemd)",
                may_pass=True)
    ]


def check_schema(settings: Settings) -> list[Problem]:
    database = settings.sqlite_database
    if database is None:
        return []  # PostgreSQL: `up` checks it under the hosts' lock (schema.prepare_postgres)
    try:
        state = schema.inspect_sqlite(database)
    except schema.SchemaError as error:
        return [Problem(str(error), "restore the database from a backup, or point mlflow.backend_store_uri elsewhere")]
    if state is None or state.up_to_date:
        return []
    if state.newer_than_mlflow or settings.mlflow.schema_upgrade == "refuse":
        refusal = schema.refusal(state, settings.mlflow.backend_store_uri, as_this_user())
        return [Problem(refusal, "see above; your data was not touched")]
    return []  # backup-and-upgrade: the launcher does it before MLflow starts (launch.py)


def check_all(settings: Settings) -> list[Problem]:
    """Every problem found, in the order a person would fix them."""
    problems = check_dependencies(settings)
    problems += check_directories(settings)
    if problems:
        return problems
    problems = check_not_running(settings)
    if problems:
        return problems
    return check_ports(settings) + check_schema(settings)
