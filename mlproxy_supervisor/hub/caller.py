"""Who is calling MLflow in team mode: what the Hub service says, and what MLflow believes.

The service names the Hub user in X-MLproxy-User, percent-encoded (any Hub name passes, and no
value holds a comma: a client's header that a server folds into ours, as Starlette joins
`X_MLproxy_User` and `X-MLproxy-User`, can never read as a name), says whether they are an admin in
X-MLproxy-Admin, and proves both with X-MLproxy-Proof: an HMAC of the two, keyed by MLflow's auth
secret (Settings.mlflow_auth_secret, 0600, the stack's user alone reads it). MLflow's side
(hub/identity.py, hub/attribution.py) believes a caller only with a proof that matches, so even a
request smuggled past the service could not name anyone.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, unquote

from ..programs import ADMIN_HEADER, PROOF_HEADER, USER_HEADER

HEADERS = (USER_HEADER, ADMIN_HEADER, PROOF_HEADER)


def headers(name: str, admin: bool, secret: str) -> dict[str, str]:
    """The headers that name `name` to MLflow, for the service (and the agent's own probes)."""
    user, flag = quote(name, safe=""), "true" if admin else "false"
    return {USER_HEADER: user, ADMIN_HEADER: flag, PROOF_HEADER: _proof(user, flag, secret)}


def read(user: str | None, admin: str | None, proof: str | None, secret: str) -> tuple[str, bool] | None:
    """(name, admin) when the three header values are the service's, else None."""
    if not (user and admin and proof and secret) or not hmac.compare_digest(proof, _proof(user, admin, secret)):
        return None
    return unquote(user), admin == "true"


def _proof(user: str, flag: str, secret: str) -> str:
    return hmac.new(secret.encode(), f"{user}\n{flag}".encode(), hashlib.sha256).hexdigest()
