"""The three ways of starting MLflow next to Jupyter that the benchmarks compare.

- ``Mlproxy``: `mlproxy up`, as a user runs it.
- ``Bare``: the same two servers (mlproxy's own argv and environment, from
  ``mlproxy_supervisor.launch``) started directly, MLflow first; the limit for ordered start-up.
- ``OldRecipe``: `mlflow server` with MLflow's defaults in the background, `sleep 3`, then
  `jupyter notebook` with jupyter-server-proxy configured by hand.

Every server gets its own session (process group), so a stop never misses a worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlproxy_supervisor import credentials, launch
from mlproxy_supervisor.config import Settings, load_settings
from mlproxy_supervisor.launch import jupyter_command, mlflow_command
from mlproxy_supervisor.rpc import Supervisor
from mlproxy_supervisor.status_document import StatusDocument

from . import procs

BIN = Path(sys.executable).parent
OLD_RECIPE_SLEEP = 3.0
# No benchmark talks to the internet: MLflow's telemetry is off in every variant (mlproxy turns
# it off by default anyway), so a slow or absent network cannot skew a baseline.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class Ports:
    jupyter: int
    mlflow: int
    metrics: int = 0


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROXY_") and k != "JUPYTER_TOKEN"}
    return {**env, **QUIET_ENV}


def mlproxy_env(state_dir: Path, ports: Ports) -> dict[str, str]:
    return {
        **base_env(),
        "MLPROXY_STATE_DIR": str(state_dir),
        "MLPROXY_JUPYTER__PORT": str(ports.jupyter),
        "MLPROXY_MLFLOW__PORT": str(ports.mlflow),
        "MLPROXY_AGENT__METRICS_PORT": str(ports.metrics),
    }


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_for(env: dict[str, str]) -> Settings:
    """The settings `mlproxy up` would load in this environment."""
    with _environment(env):
        return load_settings()


def _spawn(argv: list[str], env: dict[str, str], cwd: Path, log: Path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)


def _stop_groups(processes: list[subprocess.Popen]) -> None:
    procs.kill_tree([], pgids=[p.pid for p in processes])
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


class Mlproxy:
    """`mlproxy up` in the foreground, as a child of the benchmark."""

    def __init__(self, state_dir: Path, ports: Ports, env: dict[str, str] | None = None):
        self.state_dir, self.ports = state_dir, ports
        self.env = {**mlproxy_env(state_dir, ports), **(env or {})}  # env: MLPROXY_* settings of this variant
        self.settings = settings_for(self.env)
        self.mlflow_socket = self.settings.mlflow_socket  # MLflow's own listener (None: its TCP port)
        self.output = state_dir.parent / f"{state_dir.name}.up.log"
        self.process: subprocess.Popen | None = None
        self.output_offset = 0

    def output_text(self) -> str:
        """What this run of `mlproxy up` printed."""
        with open(self.output, "rb") as out:
            out.seek(self.output_offset)
            return out.read().decode(errors="replace")

    def start(self) -> tuple[float, float]:
        """Exec `mlproxy up`; returns (monotonic, wall) times just before the exec."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output, "ab") as out:
            self.output_offset = out.tell()
            t0, wall = time.monotonic(), time.time()
            self.process = subprocess.Popen(
                [str(BIN / "mlproxy"), "up"], env=self.env, cwd=self.state_dir.parent, stdout=out, stderr=subprocess.STDOUT
            )
        return t0, wall

    def token(self) -> str | None:
        try:
            return credentials.read_token(self.settings.jupyter.token_file)
        except credentials.CredentialError:
            return None

    def status(self) -> dict | None:
        """The status document `mlproxy status` reads (read directly: no process per poll)."""
        document = StatusDocument.read(self.settings.status_file)
        return None if document is None else document.model_dump(mode="json", by_alias=True)

    def supervisor(self) -> Supervisor:
        return Supervisor(self.settings.socket_path)

    def stop(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        tree = procs.descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.kill_tree(tree, grace=2)
            self.process.wait(5)


class Bare:
    """mlproxy's MLflow and Jupyter, exact argv and environment, started by hand."""

    def __init__(self, state_dir: Path, ports: Ports):
        self.state_dir, self.ports = state_dir, ports
        self.env = mlproxy_env(state_dir, ports)
        self.settings = settings_for(self.env)
        self.mlflow_socket = self.settings.mlflow_socket  # MLflow's own listener (None: its TCP port)
        self.processes: list[subprocess.Popen] = []
        self.token: str | None = None

    def prepare(self) -> None:
        """What `mlproxy up` and the launcher would have created; done before the clock starts."""
        settings = self.settings
        for directory in (settings.state_dir, settings.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        settings.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token = credentials.ensure_token(settings.jupyter.token_file)
        launch.prepare_jupyter(launch.launch_spec("jupyter", settings).jupyter)  # the token copy, the notebook directory

    def start_mlflow(self) -> subprocess.Popen:
        argv, extra = mlflow_command(self.settings)
        passed = ()
        if self.mlflow_socket is not None:  # what the launcher does before exec: bind the socket for uvicorn's --fd
            listener = launch.bind_mlflow_socket(str(self.mlflow_socket))
            argv = [*argv]
            argv[argv.index("--fd") + 1] = str(listener.fileno())
            passed = (listener.fileno(),)
        process = _spawn(argv, {**self.env, **extra}, self.state_dir, self.settings.log_dir / "mlflow.log", passed)
        if passed:
            listener.close()  # the child holds its own copy
        self.processes.append(process)
        return process

    def start_jupyter(self) -> subprocess.Popen:
        argv, extra = jupyter_command(self.settings)
        process = _spawn(argv, {**self.env, **extra}, self.state_dir, self.settings.log_dir / "jupyter.log")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        _stop_groups(self.processes[::-1])
        self.processes.clear()


OLD_RECIPE_JUPYTER_CONFIG = """\
# The hand-made setup mlproxy replaces: jupyter-server-proxy pointed at a running MLflow.
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = {jupyter_port}
c.ServerApp.open_browser = False
c.ServerApp.root_dir = {root_dir!r}
c.ServerApp.allow_root = {allow_root}
c.IdentityProvider.token = {token!r}
c.ServerProxy.servers = {{"mlflow": {{"port": {mlflow_port}, "absolute_url": False}}}}
# mlproxy is installed in this environment; keep its Jupyter extension out of the old recipe.
c.ServerApp.jpserver_extensions = {{"mlproxy_supervisor.jupyter": False}}
"""


def mlflow_cli_like_mlproxy(directory: Path, ports: Ports) -> OldRecipe:
    """`mlflow server` with mlproxy's choices (1 worker, job execution off): what mlproxy would run
    if it used MLflow's CLI instead of exec'ing uvicorn on MLflow's app."""
    return OldRecipe(directory, ports, ("--workers", "1"), {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


class OldRecipe:
    """mlflow server ... &  sleep 3;  jupyter notebook  (MLflow's defaults, hand-made proxy config).

    ``mlflow_args`` and ``mlflow_env`` depart from MLflow's defaults, for the `mlflow server`
    comparison with mlproxy's settings (1 worker, job execution off)."""

    def __init__(self, directory: Path, ports: Ports, mlflow_args: tuple[str, ...] = (), mlflow_env: dict | None = None):
        self.directory, self.ports = directory, ports
        self.mlflow_args, self.mlflow_env = list(mlflow_args), dict(mlflow_env or {})
        self.mlflow_socket = None  # `mlflow server` listens on its TCP port
        self.env = base_env()
        self.processes: list[subprocess.Popen] = []
        self.token = "benchmark-" + os.urandom(12).hex()
        self.config = directory / "jupyter_server_config.py"

    def prepare(self) -> None:
        (self.directory / "notebooks").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            OLD_RECIPE_JUPYTER_CONFIG.format(
                jupyter_port=self.ports.jupyter, mlflow_port=self.ports.mlflow, token=self.token,
                root_dir=str(self.directory / "notebooks"), allow_root=os.geteuid() == 0,
            )
        )

    def mlflow_argv(self) -> list[str]:
        # MLflow's defaults (workers, job execution, artifacts) except an absolute SQLite store and the port.
        return [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
                "--port", str(self.ports.mlflow), *self.mlflow_args]  # fmt: skip

    def start_mlflow(self) -> subprocess.Popen:
        process = _spawn(self.mlflow_argv(), {**self.env, **self.mlflow_env}, self.directory, self.directory / "mlflow.log")
        self.processes.append(process)
        return process

    def start_jupyter(self) -> subprocess.Popen:
        argv = [str(BIN / "jupyter"), "notebook", f"--config={self.config}"]
        process = _spawn(argv, self.env, self.directory, self.directory / "jupyter.log")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        _stop_groups(self.processes[::-1])
        self.processes.clear()
