"""`mlproxy env`: the variables that point an MLflow client at the running stack.

Kernels started by the stack's Jupyter get them already; everything else (`jupyter nbconvert
--execute`, papermill, cron, an ssh shell, a CI job) needs them too, or MLflow silently logs to
./mlruns or ./mlflow.db in its working directory. `eval "$(mlproxy env)"` sets them.
"""

from __future__ import annotations

import json
import shlex
import sys

from .config import Settings
from .credentials import CredentialError, read_token
from .exits import EXIT_DOWN, EXIT_FAILED, STATUS_EXIT
from .status import current_status

FORMATS = ("sh", "dotenv", "json")


def variables(settings: Settings) -> dict[str, str]:
    """MLFLOW_TRACKING_URI, and the token where the stack has one to give (single-user mode).
    Raises CredentialError when the token file cannot be read."""
    if settings.team_mode:  # each user's own Hub token: nothing the stack can hand out
        return {"MLFLOW_TRACKING_URI": settings.team_url.rstrip("/")}
    return {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLFLOW_TRACKING_TOKEN": read_token(settings.jupyter.token_file)}


def render(values: dict[str, str], form: str) -> str:
    if form == "json":
        return json.dumps(values, indent=2)
    if form == "dotenv":  # docker --env-file, systemd's EnvironmentFile=, python-dotenv: no quoting
        return "\n".join(f"{key}={value}" for key, value in values.items())
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in values.items())


def run(settings: Settings, form: str) -> int:
    status = current_status(settings)
    if status.overall == "down":
        print(f"mlproxy env: {status.summary}; start it with `mlproxy up`", file=sys.stderr)
        return EXIT_DOWN
    try:
        values = variables(settings)
    except CredentialError as error:
        print(f"mlproxy env: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(render(values, form))
    if settings.team_mode:
        print(
            "mlproxy env: team mode: set MLFLOW_TRACKING_TOKEN to your own Hub API token (from "
            f"{settings.team.public_url}/hub/token, with the scope access:services!service={settings.team.service_name}); "
            "in a Hub server it is $JUPYTERHUB_API_TOKEN",
            file=sys.stderr,
        )
    return STATUS_EXIT.get(status.overall, EXIT_DOWN)
