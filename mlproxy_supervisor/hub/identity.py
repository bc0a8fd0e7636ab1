"""Who is calling, inside MLflow's process in team mode.

MLflow's auth app asks its `authorization_function` (our `authenticate`, named in the auth
configuration `up` writes) on every request. The answer is the user the Hub service names in
X-MLproxy-User: the service authenticated the request with the Hub, removed any such header the
client sent, and is the only thing that reaches MLflow's socket (0700 runtime directory). So the
header is trusted here, and only here.

Users exist in MLflow's auth store from the first request the service makes for them (the
service also walks the Hub's user list, so grants work before a user's first visit), with the
admin flag the Hub's admin group gives them.
"""

from __future__ import annotations

import secrets

from flask import jsonify, request
from werkzeug.datastructures import Authorization

from ..programs import ADMIN_HEADER, USER_HEADER

# name -> admin flag as this worker last wrote it: the function runs a few times per request.
_known: dict[str, bool] = {}


def authenticate():
    name = request.headers.get(USER_HEADER, "").strip()
    if not name:
        response = jsonify(error_code="UNAUTHENTICATED", message="no user: MLflow is reached through the Hub service only")
        response.status_code = 401
        return response
    _ensure_user(name, request.headers.get(ADMIN_HEADER) == "true")
    return Authorization("basic", {"username": name, "password": ""})


def _ensure_user(name: str, admin: bool) -> None:
    if _known.get(name) == admin:
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
    _known[name] = admin
