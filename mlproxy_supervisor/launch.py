"""`mlproxy run NAME`: build a server's argv and environment from the config, then exec it.

Exec (not spawn) keeps signals and exit codes the server's own, so supervisord manages the real
process. Secrets travel in the environment or in 0600 files: argv is world-readable in /proc.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

from . import credentials, schema
from .config import Settings

SERVICES = ("mlflow", "jupyter")


class LaunchError(Exception):
    pass


# The variables `mlflow server` hands its uvicorn child (mlflow/server/constants.py and
# environment_variables.py); a unit test checks them against the installed MLflow.
MLFLOW_SERVER_ENV = {
    "backend_store": "_MLFLOW_SERVER_FILE_STORE",
    "registry_store": "_MLFLOW_SERVER_REGISTRY_STORE",
    "artifact_root": "_MLFLOW_SERVER_ARTIFACT_ROOT",
    "serve_artifacts": "_MLFLOW_SERVER_SERVE_ARTIFACTS",
    "artifacts_destination": "_MLFLOW_SERVER_ARTIFACT_DESTINATION",
    "sgi_name": "_MLFLOW_SGI_NAME",
    "boot_id": "_MLFLOW_SERVER_BOOT_ID",
    "in_job_executor": "_MLFLOW_IN_JOB_EXECUTOR",
}


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
        # child outlives a kill -9 of that parent; the agent reaps such leftovers.
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
        return argv, {**common_env, **env}
    # Default: exec uvicorn on MLflow's app directly, as `mlflow server` would start it, minus
    # the CLI parent: one process (supervisord's pid is the server, so kill -9 and SIGSTOP hit
    # what serves), about 290 MB less memory and about 1.5 s less start-up (docs/benchmarks.md).
    argv = [
        sys.executable, "-m", "uvicorn",
        "--log-config", _package_file("mlflow", "server", "uvicorn_log_config.yaml"),
        "--host", mlflow.host, "--port", str(mlflow.port),
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
        "MLFLOW_ENABLE_WORKSPACES": "false",
    }
    return argv, {**common_env, **env}


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
    if os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")  # `mlproxy up` warned; systemd and images use a user
    env = {
        # Jupyter reads the token from this file: not in argv, not in any environment.
        "JUPYTER_TOKEN_FILE": str(settings.jupyter_token_copy),
        # Kernels inherit this, so mlflow.log_metric in a notebook lands in the managed MLflow.
        "MLFLOW_TRACKING_URI": settings.mlflow_url,
        "PYTHONUNBUFFERED": "1",
    }
    return argv, env


def prepare_mlflow(settings: Settings, env: dict[str, str]) -> None:
    """Refuse, or back up and upgrade, an out-of-date SQLite schema before MLflow sees it."""
    uri = settings.mlflow.backend_store_uri
    database = schema.sqlite_database(uri)
    if database is None:
        return  # other databases: MLflow's own check (mlflow_app.py) refuses with its message
    state = schema.inspect_sqlite(database)
    if state is None or state.up_to_date:
        return
    if state.newer_than_mlflow or settings.mlflow.schema_upgrade == "refuse":
        raise LaunchError(schema.refusal(state, uri))
    backup = schema.backup_and_upgrade(state, uri, env)
    print(f"mlproxy: upgraded {database} from {state.current} to {state.expected}; backup at {backup}", flush=True)


def exec_service(name: str, settings: Settings) -> None:
    if name == "mlflow":
        argv, extra = mlflow_command(settings)
    elif name == "jupyter":
        argv, extra = jupyter_command(settings)
    else:
        raise LaunchError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    env = {**os.environ, **extra}
    env.pop("JUPYTER_TOKEN", None)  # the file is the one source; keep the value out of environments
    if name == "mlflow":
        try:
            prepare_mlflow(settings, env)
        except schema.SchemaError as error:
            raise LaunchError(str(error)) from None
    else:
        # Jupyter reads its token file verbatim (a trailing newline would become part of the
        # token), so it gets a normalized private copy in the 0700 runtime directory.
        try:
            token = credentials.read_token(settings.jupyter.token_file)
        except credentials.CredentialError as error:
            raise LaunchError(str(error)) from None
        credentials.write_private(settings.jupyter_token_copy, token)
    Path(settings.jupyter.root_dir).mkdir(parents=True, exist_ok=True)
    os.execve(argv[0], argv, env)
