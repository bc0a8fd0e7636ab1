"""Start MLflow or Jupyter: argv, environment and start-up checks, then exec.

`mlproxy up` resolves each server's launch from the config once, into a launch file in the 0700
runtime directory; supervisord's command for the server is `python -m mlproxy_supervisor.launch
FILE`, which checks, prepares and execs without loading the config again (pydantic alone costs
about 0.18 s of every start; docs/benchmarks.md). Exec (not spawn) keeps signals and exit codes
the server's own, so supervisord manages the real process. Secrets travel in the environment or
in 0600 files (the launch file holds the store URI, which may carry a password): argv is
world-readable in /proc.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import credentials
from .exits import EXIT_CANNOT_START, EXIT_CONFIG
from .programs import MLFLOW_SERVER_ENV, SOCKET_PEERS_LOCAL_ENV, STORE_LOCK_ENV, TEAM_ENV
from .store import schema, sqlite

if TYPE_CHECKING:  # not imported at run time: the launcher must start fast
    from .config import Settings


class LaunchError(Exception):
    pass


# MLflow's unix socket reaches uvicorn (--fd) as this descriptor, bound by the launcher.
MLFLOW_LISTEN_FD = 3


def _package_file(package: str, *parts: str) -> str:
    """A data file of an installed package, found without importing it (imports cost seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError(f"{package} is not installed in {sys.prefix}")
    return os.path.join(spec.submodule_search_locations[0], *parts)


def mlflow_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    mlflow = settings.mlflow
    common_env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if mlflow.job_execution else "false",
        # A server on a closed network should not try to phone home (and wait for it).
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
        "PYTHONUNBUFFERED": "1",
    }
    if mlflow.job_execution:
        # The job runner lives in `mlflow server`'s own process, so use the CLI. Its uvicorn
        # child outlives a kill -9 of that parent; the agent reaps such leftovers. The runner
        # calls the server back on host:port, so this mode listens on TCP (config.py refuses
        # listen = "socket" with it).
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--host", mlflow.host, "--port", str(mlflow.port),
            "--workers", str(mlflow.workers), "--serve-artifacts",
        ]  # fmt: skip
        # Store URIs may carry passwords: environment, not argv (the CLI reads both variables).
        env = {
            "MLFLOW_BACKEND_STORE_URI": mlflow.backend_store_uri,
            "MLFLOW_ARTIFACTS_DESTINATION": mlflow.artifacts_destination,
        }
        return argv, {**common_env, **env, **_s3_env(settings)}
    # Default: exec uvicorn on MLflow's app directly, as `mlflow server` would start it, minus
    # the CLI parent: one process (supervisord's pid is the server, so kill -9 and SIGSTOP hit
    # what serves), about 180 MB less memory (PSS) and about 2 s less start-up (docs/benchmarks.md).
    argv = [
        sys.executable, "-m", "uvicorn",
        "--log-config", _package_file("mlflow", "server", "uvicorn_log_config.yaml"),
        *_listen_options(settings),
        "--workers", str(mlflow.workers),
        "mlproxy_supervisor.mlflow_app:app",
    ]  # fmt: skip
    names = MLFLOW_SERVER_ENV
    env = {
        names["backend_store"]: mlflow.backend_store_uri,
        names["registry_store"]: mlflow.backend_store_uri,
        names["artifact_root"]: "mlflow-artifacts:/",  # clients upload through the server
        names["serve_artifacts"]: "true",
        names["artifacts_destination"]: mlflow.artifacts_destination,
        names["sgi_name"]: "uvicorn",
        names["boot_id"]: uuid.uuid4().hex,
        names["in_job_executor"]: "false",
        STORE_LOCK_ENV: str(settings.runtime_dir / "mlflow-store.lock"),
        "MLFLOW_ENABLE_WORKSPACES": "false",
    }
    if settings.team_mode:
        # MLflow's auth app, trusting the user the Hub service names (hub/identity.py).
        env |= {TEAM_ENV: "1", "MLFLOW_AUTH_CONFIG_PATH": str(settings.mlflow_auth_config)}
    elif settings.mlflow_socket is not None:
        env[SOCKET_PEERS_LOCAL_ENV] = "1"
    return argv, {**common_env, **env, **_s3_env(settings)}


def _listen_options(settings: Settings) -> list[str]:
    # The socket (bound by the launcher, see listen_on_socket) sits in the 0700 runtime directory:
    # only the stack's user can connect to it.
    if settings.mlflow_socket is not None:
        return ["--fd", str(MLFLOW_LISTEN_FD)]
    return ["--host", settings.mlflow.host, "--port", str(settings.mlflow.port)]


def _s3_env(settings: Settings) -> dict[str, str]:
    # boto3 reads the endpoint from MLflow's variable; the keys come from store_secrets at exec.
    return {"MLFLOW_S3_ENDPOINT_URL": settings.mlflow.s3_endpoint_url} if settings.mlflow.s3_endpoint_url else {}


def jupyter_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """Only the settings mlproxy owns go on the command line; the user's own Jupyter config
    files still apply for the rest."""
    jupyter = settings.jupyter
    server_app = {
        "ip": jupyter.ip,
        "port": jupyter.port,
        "port_retries": 0,  # never drift to another port: the route and agent expect this one
        "base_url": jupyter.base_url,
        "root_dir": str(jupyter.root_dir),
        "open_browser": False,
        "allow_remote_access": jupyter.allow_remote_access,
    }
    argv = [sys.executable, "-m", "notebook"]
    argv += [f"--ServerApp.{key}={json.dumps(value) if isinstance(value, bool) else value}" for key, value in server_app.items()]
    argv += [f"--ServerApp.jpserver_extensions={name}=True" for name in ("jupyter_server_proxy", "mlproxy_supervisor.jupyter")]
    # Jupyter's request log masks query keys containing "token", but it logs in with any
    # percent-encoding of the key (%74oken=): mask every key holding a %, and the token pasted
    # under the usual other spellings of the key.
    argv += [f"--ServerApp.extra_log_scrub_param_keys={key}" for key in ("%", "TOKEN", "Token")]
    if os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")  # `mlproxy up` warned; systemd and images use a user
    env = {
        # Jupyter reads the token from this file: not in argv, not in any environment.
        "JUPYTER_TOKEN_FILE": str(settings.jupyter_token_copy),
        # Kernels inherit this (and MLFLOW_TRACKING_TOKEN, set at exec from the token file), so
        # mlflow.log_metric in a notebook lands in the managed MLflow, through Jupyter's route:
        # MLflow's own listener may be a socket, and the "View run at" links MLflow prints then
        # open in the user's browser.
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    return argv, env


@dataclass(frozen=True)
class MLflowPreparation:
    """What the launcher checks and prepares before MLflow starts."""

    backend_store_uri: str
    schema_upgrade: str  # "refuse" or "backup-and-upgrade"
    sqlite_journal_mode: str
    credentials_file: str | None  # KEY=VALUE secrets for MLflow's process only
    unix_socket: str | None  # MLflow listens here (None: on TCP)
    auth_secret_file: str | None = None  # team mode: the auth app's Flask secret key


@dataclass(frozen=True)
class JupyterPreparation:
    """What the launcher prepares before Jupyter starts."""

    token_file: str
    token_copy: str  # the normalized private copy Jupyter reads
    root_dir: str


@dataclass(frozen=True)
class LaunchSpec:
    """One server's launch, resolved from the configuration by `up` into a 0600 launch file and
    read back by the launcher: written and read by this class alone."""

    service: str
    argv: list[str]
    env: dict[str, str]
    mlflow: MLflowPreparation | None = None
    jupyter: JupyterPreparation | None = None

    def write(self, path: Path) -> None:
        credentials.write_private(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> LaunchSpec:
        """Raises OSError (unreadable) or ValueError (not a launch file of this version)."""
        data = json.loads(path.read_text())
        try:
            return cls(
                **{**data, "mlflow": data["mlflow"] and MLflowPreparation(**data["mlflow"]),
                   "jupyter": data["jupyter"] and JupyterPreparation(**data["jupyter"])}
            )  # fmt: skip
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a launch file of this mlproxy ({error}); `mlproxy up` writes it") from None


def launch_spec(name: str, settings: Settings) -> LaunchSpec:
    """What the launcher needs to start one server, resolved from the config."""
    if name == "mlflow":
        argv, env = mlflow_command(settings)
        mlflow = settings.mlflow
        preparation = MLflowPreparation(
            backend_store_uri=mlflow.backend_store_uri,
            schema_upgrade=mlflow.schema_upgrade,
            sqlite_journal_mode=mlflow.sqlite_journal_mode,
            credentials_file=str(mlflow.credentials_file) if mlflow.credentials_file else None,
            unix_socket=str(settings.mlflow_socket) if settings.mlflow_socket else None,
            auth_secret_file=str(settings.mlflow_auth_secret) if settings.team_mode else None,
        )
        return LaunchSpec(name, argv, env, mlflow=preparation)
    if name == "service":
        return LaunchSpec(name, [sys.executable, "-m", "mlproxy_supervisor.hub.service"], {"PYTHONUNBUFFERED": "1"})
    if name == "jupyter":
        argv, env = jupyter_command(settings)
        preparation = JupyterPreparation(
            token_file=str(settings.jupyter.token_file),
            token_copy=str(settings.jupyter_token_copy),
            root_dir=str(settings.jupyter.root_dir),
        )
        return LaunchSpec(name, argv, env, jupyter=preparation)
    raise LaunchError(f"unknown service {name!r}; expected one of {', '.join(settings.services)}")


def launch_file(settings: Settings, name: str) -> Path:
    return settings.programs_dir / f"{name}.json"


def write_launch_files(settings: Settings) -> None:
    for name in settings.services:
        launch_spec(name, settings).write(launch_file(settings, name))


def prepare_mlflow(spec: MLflowPreparation, env: dict[str, str]) -> None:
    """Refuse, or back up and upgrade, an out-of-date SQLite schema before MLflow sees it."""
    uri = spec.backend_store_uri
    database = sqlite.database_file(uri)
    if database is None:
        return  # other databases: MLflow's own check (mlflow_app.py) refuses with its message
    state = schema.inspect_sqlite(database)
    if state is not None and not state.up_to_date:
        _upgrade(spec, uri, database, state, env)
    sqlite.set_journal_mode(database, spec.sqlite_journal_mode)


def _upgrade(spec: MLflowPreparation, uri: str, database: Path, state: schema.SchemaState, env: dict[str, str]) -> None:
    if state.newer_than_mlflow or spec.schema_upgrade == "refuse":
        raise LaunchError(schema.refusal(state, uri))
    backup = schema.backup_and_upgrade(state, uri, env)
    print(f"mlproxy: upgraded {database} from {state.current} to {state.expected}; backup at {backup}", flush=True)


def bind_mlflow_socket(path: str) -> socket.socket:
    """MLflow's unix socket, mode 0600, bound but not listening, for uvicorn's --fd. uvicorn's own
    --uds would make it 0666 (the 0700 directory would still guard it). A socket file a killed
    MLflow left is replaced (several workers refuse to bind over it). uvicorn calls listen() once it
    serves: until then connections are refused (Jupyter answers 503 and its page reloads), not
    queued behind a start-up that may take a minute (they would time out as 504)."""
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(previous)
    return listener


def listen_on_socket(path: str) -> None:
    """The launcher's side: MLflow's socket as file descriptor MLFLOW_LISTEN_FD, kept across exec."""
    fd = bind_mlflow_socket(path).detach()
    if fd != MLFLOW_LISTEN_FD:
        os.dup2(fd, MLFLOW_LISTEN_FD)  # inheritable: uvicorn gets it across exec
        os.close(fd)
    else:
        os.set_inheritable(fd, True)


def prepare_jupyter(spec: JupyterPreparation) -> str:
    """Returns the token."""
    # Jupyter reads its token file verbatim (a trailing newline would become part of the
    # token), so it gets a normalized private copy in the 0700 runtime directory.
    token = credentials.read_token(Path(spec.token_file))
    credentials.write_private(Path(spec.token_copy), token)
    Path(spec.root_dir).mkdir(parents=True, exist_ok=True)
    return token


def exec_server(spec: LaunchSpec) -> None:
    env = {**os.environ, **spec.env}
    env.pop(credentials.TOKEN_ENV, None)  # the file is the one source; keep the value out of environments
    try:
        if spec.mlflow is not None:
            if MLFLOW_SERVER_ENV["boot_id"] in env:
                env[MLFLOW_SERVER_ENV["boot_id"]] = uuid.uuid4().hex  # one per server start, as `mlflow server` does
            env.update(credentials.store_secrets(env, spec.mlflow.credentials_file))
            if spec.mlflow.auth_secret_file:  # environment only, as MLflow reads it; never argv
                env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = credentials.read_token(Path(spec.mlflow.auth_secret_file))
            prepare_mlflow(spec.mlflow, env)
            if spec.mlflow.unix_socket:
                listen_on_socket(spec.mlflow.unix_socket)
        else:
            for name in credentials.STORE_SECRETS:  # the front doors have no use for them
                env.pop(name, None)
        if spec.jupyter is not None:
            # Kernels inherit it: their MLflow client authenticates to Jupyter's route with it.
            # Environment only (readable by this user alone), never argv or a launch file.
            env["MLFLOW_TRACKING_TOKEN"] = prepare_jupyter(spec.jupyter)
    except (schema.SchemaError, sqlite.StoreError, credentials.CredentialError) as error:
        raise LaunchError(str(error)) from None
    os.execve(spec.argv[0], spec.argv, env)


def main(argv: list[str]) -> int:
    """`python -m mlproxy_supervisor.launch FILE`: supervisord's command for MLflow and Jupyter."""
    if len(argv) != 2:
        print("usage: python -m mlproxy_supervisor.launch LAUNCH_FILE (written by `mlproxy up`)", file=sys.stderr)
        return EXIT_CONFIG
    path = Path(argv[1])
    try:
        spec = LaunchSpec.read(path)
    except OSError as error:
        print(f"mlproxy launch: cannot read {path}: {error.strerror}; `mlproxy up` writes it", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    except ValueError as error:
        print(f"mlproxy launch: {path}: {error}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    try:
        exec_server(spec)
    except LaunchError as error:
        print(f"mlproxy launch {spec.service}: {error}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
