"""MLflow's ASGI app, prepared the way `mlflow server` prepares it, for uvicorn to serve directly.

`mlflow server` checks the backend store (creating tables in a new database, refusing an
out-of-date schema) and then runs uvicorn as a child process. We make the same check here, at
import time in the server process itself, so a broken store makes the process exit and
supervisord's crash-loop handling (and the agent's FATAL report and backoff) applies.

One difference on purpose: MLflow retries an unreachable database for about 100 s inside the
process (10 attempts, exponential sleeps), which looks like a slow start rather than a failure.
We try once, with a short connect timeout, and exit with the cause; supervisord and the agent
do the retrying, visibly.
"""

import errno
import fcntl
import logging
import os
import sys

import sqlalchemy
from starlette.responses import JSONResponse, PlainTextResponse
from werkzeug.exceptions import InternalServerError

from .exits import EXIT_CANNOT_START
from .programs import MLFLOW_PROBE_PATHS, MLFLOW_SERVER_ENV, SOCKET_PEERS_LOCAL_ENV, STORE_LOCK_ENV, TEAM_ENV
from .store import sqlite

CONNECT_TIMEOUT = 5  # seconds


class StoreUnusable(Exception):
    pass


def _check_reachable(uri: str) -> None:
    database = sqlite.database_file(uri)
    if database is not None:
        directory = database.parent
        if database.exists() and not os.access(database, os.R_OK | os.W_OK):
            raise StoreUnusable(f"the database {database} is not writable by this user (uid {os.geteuid()})")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreUnusable(f"the database directory {directory} is not writable (SQLite needs it for its journal)")
        for side_file in sqlite.journal_files(database):  # e.g. -wal/-shm left by another user
            if side_file.exists() and not os.access(side_file, os.R_OK | os.W_OK):
                raise StoreUnusable(f"{side_file} is not writable by this user (uid {os.geteuid()}): chown it to the database's owner")
        return
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if uri.startswith(("postgresql", "mysql")) else {}
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as error:
        cause = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise StoreUnusable(f"cannot connect to the backend store {engine.url.render_as_string(hide_password=True)}: {cause}") from None
    finally:
        engine.dispose()


def _initialize_stores() -> None:
    backend = os.environ[MLFLOW_SERVER_ENV["backend_store"]]
    _check_reachable(backend)  # before importing MLflow (2 s): a dead database fails fast

    from mlflow.server.handlers import initialize_backend_stores
    # With several workers each imports this module; one at a time creates a new database.
    with open(os.environ[STORE_LOCK_ENV], "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        initialize_backend_stores(
            backend,
            os.environ[MLFLOW_SERVER_ENV["registry_store"]],
            os.environ[MLFLOW_SERVER_ENV["artifact_root"]],
        )


class WithoutProbes(logging.Filter):
    """Drops the agent's probe requests from uvicorn's access log (args: client, method, path,
    HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and args[1] == "GET" and args[2] in MLFLOW_PROBE_PATHS)


logging.getLogger("uvicorn.access").addFilter(WithoutProbes())

try:
    _initialize_stores()
except Exception as error:  # this line is the cause the agent reports from the log tail
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    print(f"mlproxy: MLflow cannot use its backend store: {type(error).__name__}: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CANNOT_START)

from mlflow.server.fastapi_app import app, flask_app  # noqa: E402  (after the store check, as `mlflow server`)


def _team_app():
    """Team mode: MLflow's auth app (users, permissions per experiment and model), with the caller
    named by the Hub service (hub/identity.py, the auth configuration's authorization_function)
    and every write attributed to that caller (hub/attribution.py). create_app() migrates the
    auth database and makes its bootstrap admin: one worker at a time."""
    with open(os.environ[STORE_LOCK_ENV], "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow.server.auth import create_app

        team_app = create_app(flask_app)  # a new FastAPI app: its permission middleware covers the native routes
    from .hub import attribution

    attribution.install(flask_app, team_app)  # the Flask routes, and OTLP's native one
    team_app.add_middleware(NoAssistant)
    return team_app


class NoAssistant:
    """Team mode: MLflow's Assistant runs an agent with a shell on the server under the stack's
    account, for whoever asks; it is not served. The Hub service refuses it too; this refusal
    reads the path as MLflow's router does (decoded), whatever spelling reached it."""

    PREFIX = "/ajax-api/3.0/mlflow/assistant"

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from starlette._utils import get_route_path

        if scope["type"] == "http" and get_route_path(scope).startswith(self.PREFIX):
            message = "MLflow's Assistant is not served in team mode (docs/SECURITY.md)"
            return await JSONResponse({"error_code": "PERMISSION_DENIED", "message": message}, status_code=403)(scope, receive, send)
        return await self.app(scope, receive, send)


if os.environ.get(TEAM_ENV) == "1":
    app = _team_app()

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space_body(error: OSError) -> dict:
    where = error.filename or "its store"
    return {
        "error_code": "RESOURCE_EXHAUSTED",
        "message": f"{os.strerror(error.errno)}: the server could not store this in {where}; free space there, then retry",
    }


# A full disk answers 507 with MLflow's error format and the cause, not a bare "500 Internal
# Server Error". Artifact uploads are FastAPI routes, the REST API is Flask: one handler each.
def _flask_out_of_space(error: OSError):
    return (_out_of_space_body(error), 507) if error.errno in OUT_OF_SPACE else InternalServerError()


async def _fastapi_out_of_space(request, error: OSError):
    if error.errno in OUT_OF_SPACE:
        return JSONResponse(_out_of_space_body(error), status_code=507)
    return PlainTextResponse("Internal Server Error", status_code=500)


flask_app.register_error_handler(OSError, _flask_out_of_space)
app.add_exception_handler(OSError, _fastapi_out_of_space)


class SocketPeersAreLocal:
    """uvicorn gives a unix-socket peer no client address, and MLflow's Assistant refuses such a
    request as remote (403). In single-user mode the socket sits in the 0700 runtime directory:
    only the stack's own user reaches it, directly or through Jupyter's login (whose kernels run
    as that user anyway), so its peers are as local as loopback (docs/SECURITY.md)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope.get("client"):
            scope = {**scope, "client": ("127.0.0.1", 0)}
        await self.app(scope, receive, send)


if os.environ.get(SOCKET_PEERS_LOCAL_ENV) == "1":
    app = SocketPeersAreLocal(app)

__all__ = ["app"]
