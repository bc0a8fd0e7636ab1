"""MLflow's auth app in team mode: its configuration and secrets, written by `mlproxy up`.

MLflow's auth app keeps users and their permissions per experiment and model in its own database
(Settings.mlflow_auth_database). Nobody logs in to it with a password: the authorization function
(hub/identity.py) names the caller from the Hub service's header. It still insists on a bootstrap
admin, created once with a random password nobody knows, under a name the service refuses to any
Hub user (programs.RESERVED_USER_PREFIX).
"""

from __future__ import annotations

import secrets

from .. import credentials
from ..config import Settings
from ..programs import BOOTSTRAP_ADMIN

AUTHORIZATION_FUNCTION = "mlproxy_supervisor.hub.identity:authenticate"


def ensure_secrets(settings: Settings) -> str:
    """The service's Hub API token, the service's cookie secret and MLflow's Flask secret key,
    each generated (0600) on first start; returns the token."""
    credentials.ensure_token(settings.service_cookie_secret)
    credentials.ensure_token(settings.mlflow_auth_secret)
    return credentials.ensure_token(settings.team.service_token_file)


def write_config(settings: Settings) -> None:
    """basic_auth.ini for MLflow's auth app (0600: it holds the bootstrap admin's password)."""
    text = (
        "; Written by `mlproxy up` (team mode) from the mlproxy configuration: change that, not this file.\n"
        "[mlflow]\n"
        f"default_permission = {settings.team.default_permission}\n"
        f"database_uri = sqlite:///{settings.mlflow_auth_database}\n"
        f"admin_username = {BOOTSTRAP_ADMIN}\n"
        f"admin_password = {secrets.token_urlsafe(32)}\n"
        f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
    )
    credentials.write_private(settings.mlflow_auth_config, text)
