"""Run an MLflow client script on the host, as a remote user would, against a stack's route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_client(script: str, base: str, token: str, *args: str, timeout: float, cwd: Path | None = None,
               tracking_uri: str | None = None, env: dict | None = None) -> dict:  # fmt: skip
    """Run `script` with MLFLOW_TRACKING_URI=<base>/mlflow (or `tracking_uri`) and the token (and no
    other MLflow or mlproxy settings but `env`); return the JSON object its last output line holds."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPROXY_"))}
    environment.update(MLFLOW_TRACKING_URI=tracking_uri or f"{base}/mlflow", MLFLOW_TRACKING_TOKEN=token, **(env or {}))
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=environment, cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
