"""A real mlproxy stack for tests: `mlproxy up` in a subprocess, on its own state dir and ports
(from tests/support/ports.py unless the test passes its own)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlproxy_supervisor.config import ConfigError, Settings, read_resolved
from mlproxy_supervisor.rpc import Supervisor
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
# What `mlproxy up` does first: load_settings() in its environment and working directory.
LOAD_SETTINGS = "import pickle, sys; from mlproxy_supervisor.config import load_settings; sys.stdout.buffer.write(pickle.dumps(load_settings()))"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def cmdlines() -> dict[int, str]:
    """Every process's argv, as /proc shows it to anyone on the machine."""
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                result[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return result


def processes_under(state_dir: Path) -> list[str]:
    """Processes that belong to the stack at state_dir (its paths appear in their argv or cwd)."""
    found = []
    for pid, command in cmdlines().items():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if str(state_dir) in command or cwd.startswith(str(state_dir)):
            found.append(f"{pid}: {command}")
    return found


class Stack:
    def __init__(self, state_dir: Path, jupyter_port: int | None = None, mlflow_port: int | None = None, metrics_port: int | None = None,
                 env: dict | None = None, config: str | None = None):  # fmt: skip
        self.state_dir = Path(state_dir)
        self.jupyter_port, self.mlflow_port, self.metrics_port = (
            free_port() if port is None else port for port in (jupyter_port, mlflow_port, metrics_port)
        )
        self.extra_env = dict(env or {})
        self.config_file = None
        if config is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.config_file = self.state_dir.parent / f"{self.state_dir.name}.toml"
            self.config_file.write_text(config)
        self.process: subprocess.Popen | None = None
        self.output = self.state_dir.parent / f"{self.state_dir.name}.up.log"

    # --- environment and commands -------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROXY_")}
        env.update(
            MLPROXY_STATE_DIR=str(self.state_dir),
            MLPROXY_JUPYTER__PORT=str(self.jupyter_port),
            MLPROXY_MLFLOW__PORT=str(self.mlflow_port),
            MLPROXY_AGENT__METRICS_PORT=str(self.metrics_port),
        )
        if self.config_file is not None:
            env["MLPROXY_CONFIG"] = str(self.config_file)
        # `up` records its running stack for a second shell of the same user (running.py), under
        # $XDG_RUNTIME_DIR/mlproxy/: each test stack is one user's only stack, so that a shell
        # with no configuration finds it, as it would on a user's machine.
        env["XDG_RUNTIME_DIR"] = str(self.runtime_home)
        # JupyterLab keeps user settings and workspaces (open tabs) on the server, by default in
        # ~/.jupyter/lab: keep each test stack's own, so no run inherits another's layout.
        env["JUPYTERLAB_SETTINGS_DIR"] = str(self.state_dir / "lab" / "user-settings")
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(self.state_dir / "lab" / "workspaces")
        env.update(self.extra_env)
        return env

    @property
    def runtime_home(self) -> Path:
        """The stack's user's $XDG_RUNTIME_DIR (`up` makes it, 0700, when it records the stack)."""
        return self.state_dir.parent / f"{self.state_dir.name}.xdg-runtime"

    def second_shell(self, *args: str, cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        """`mlproxy ARGS` typed in another terminal of the stack's user: another working directory,
        no MLPROXY_* variables (`env` adds some)."""
        shell = {k: v for k, v in self.env.items() if not k.startswith("MLPROXY_")}
        return subprocess.run([sys.executable, "-m", "mlproxy_supervisor", *args], env={**shell, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip

    def mlproxy(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlproxy_supervisor", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=check, cwd=self.state_dir.parent,
        )

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 180) -> Stack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.output, "a")  # noqa: SIM115 - the stack writes to it; closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlproxy_supervisor", "up"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.state_dir.parent,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180) -> dict:
        result = self.mlproxy("status", "--wait", "--json", "--timeout", str(timeout), timeout=timeout + 30)
        status = json.loads(result.stdout)
        assert result.returncode == 0, f"stack not ready after {timeout} s: {status.get('summary')}\n{self.tail()}"
        return status

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last status: {json.dumps(last, indent=1)[:3000]}")

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def tail(self, lines: int = 40) -> str:
        chunks = []
        try:
            logs = sorted(self.configured.log_dir.glob("*.log"))
        except ConfigError:  # `up` refused the configuration: it started no program
            logs = []
        for path in [self.output, *logs]:
            if path.exists():
                chunks.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)

    # --- observation ----------------------------------------------------------------------
    def status(self) -> dict:
        return json.loads(self.mlproxy("status", "--json").stdout)

    @functools.cached_property
    def configured(self) -> Settings:
        """The stack's configuration as `mlproxy up` resolves it, from the stack's environment and
        working directory: where its files are, known before it runs (ConfigError if up refuses it)."""
        result = subprocess.run([sys.executable, "-c", LOAD_SETTINGS], env=self.env, cwd=self.state_dir.parent,
                                capture_output=True, timeout=120, check=False)  # fmt: skip
        if result.returncode != 0:
            raise ConfigError(result.stderr.decode(errors="replace").strip())
        return pickle.loads(result.stdout)

    @property
    def token(self) -> str:
        return self.configured.jupyter.token_file.read_text().strip()

    @property
    def ports(self) -> dict[str, int]:
        """The stack's ports, as Stack's keyword arguments: Stack(..., **stack.ports) is another stack
        on the same ones."""
        return dict(jupyter_port=self.jupyter_port, mlflow_port=self.mlflow_port, metrics_port=self.metrics_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.jupyter_port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"token {self.token}"
        return session

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.configured.socket_path)

    @property
    def settings(self) -> Settings:
        """The running stack's resolved configuration, read back from the file `up` wrote."""
        return read_resolved(self.configured.resolved_file)

    @property
    def mlflow_socket(self) -> Path | None:
        """MLflow's unix socket (the default, listen = "socket"; None with "tcp"); only the stack's
        user connects to it."""
        return self.configured.mlflow_socket

    def pid(self, name: str) -> int:
        return self.supervisor.processes()[name].pid
