"""MLflow's ASGI app, prepared the way `mlflow server` prepares it, for uvicorn to serve directly.

`mlflow server` checks the backend store (creating tables in a new database, refusing an
out-of-date schema) and then runs uvicorn as a child process. We make the same check here, at
import time in the server process itself, so a broken store still makes the process exit and
supervisord's crash-loop handling (and the agent's FATAL report) applies.
"""

import fcntl
import os
import sys

from mlflow.server.handlers import initialize_backend_stores

from .config import load_settings
from .launch import MLFLOW_SERVER_ENV


def _initialize_stores() -> None:
    lock_path = load_settings().runtime_dir / "mlflow-store.lock"
    # With several workers each imports this module; one at a time creates a new database.
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        initialize_backend_stores(
            os.environ[MLFLOW_SERVER_ENV["backend_store"]],
            os.environ[MLFLOW_SERVER_ENV["registry_store"]],
            os.environ[MLFLOW_SERVER_ENV["artifact_root"]],
        )


try:
    _initialize_stores()
except Exception as error:  # the message is the cause the agent reports from the log tail
    print(f"mlproxy: MLflow cannot use its backend store: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    sys.exit(3)

from mlflow.server.fastapi_app import app  # noqa: E402  (after the store check, as mlflow server)

__all__ = ["app"]
