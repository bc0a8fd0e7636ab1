"""Who is calling, inside MLflow's process in team mode.

MLflow's auth app asks its `authorization_function` (our `authenticate`, named in the auth
configuration `up` writes) on every request. The answer is the user the Hub service names, with
its proof (hub/caller.py): the service authenticated the request with the Hub, removed any such
header the client sent, and is the only thing that reaches MLflow's socket (0700 runtime
directory) and knows the secret the proof is keyed by (MLflow's own Flask secret key).

Users exist in MLflow's auth store from the first request the service makes for them (the
service also walks the Hub's user list, so grants work before a user's first visit), with the
admin flag the Hub's admin group gives them.
"""

from __future__ import annotations

import os
import secrets
import time

from flask import jsonify, request
from werkzeug.datastructures import Authorization

from . import caller as caller_headers

# MLflow's Flask secret key (the launcher puts it here from Settings.mlflow_auth_secret): the proof's key.
SECRET_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"

ADMIN_FLAG_TTL = 5.0  # seconds this worker trusts the admin flag it last wrote (another may change it)
# name -> (admin flag this worker last wrote or read, when): the function runs a few times per request.
_known: dict[str, tuple[bool, float]] = {}


def caller(get_header) -> tuple[str, bool] | None:
    """(name, admin) the Hub service vouches for in these headers (`get_header(name)`), else None."""
    user, admin, proof = (get_header(name) for name in caller_headers.HEADERS)
    return caller_headers.read(user, admin, proof, os.environ.get(SECRET_ENV, ""))


def authenticate():
    found = caller(request.headers.get)
    if found is None:
        response = jsonify(error_code="UNAUTHENTICATED", message="no user: MLflow is reached through the Hub service only")
        response.status_code = 401
        return response
    name, admin = found
    _ensure_user(name, admin)
    return Authorization("basic", {"username": name, "password": ""})


def _ensure_user(name: str, admin: bool) -> None:
    known = _known.get(name)
    if known is not None and known[0] == admin and time.monotonic() - known[1] < ADMIN_FLAG_TTL:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store

    if not store.has_user(name):
        try:
            # Nobody logs in with this password: the Hub is the login. MLflow wants one (12+ chars).
            store.create_user(name, secrets.token_urlsafe(32), is_admin=admin)
        except MlflowException as error:  # another worker made it first
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    elif store.get_user(name).is_admin != admin:
        store.update_user(name, is_admin=admin)
    _known[name] = (admin, time.monotonic())
