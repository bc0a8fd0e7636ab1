"""Team mode: one MLflow for a whole JupyterHub (docs/team.md).

In jupyterhub_config.py, one line:

    import mlproxy_supervisor.hub; mlproxy_supervisor.hub.configure(c)

It reads mlproxy's configuration (the same file the team stack runs with: `[team] hub_api_url`
set) and registers, in the Hub's configuration:
- the service (`c.JupyterHub.services`): its URL on loopback and its API token, from the 0600
  file mlproxy generates (made here if the stack has not made it yet, owned like the state
  directory);
- the role that lets every user reach it (`extra_user_scopes`: access:services!service=NAME) and
  the service's own role (list the users and their groups, reach itself for the agent's probe);
- the users' servers' token scopes (their kernels' $JUPYTERHUB_API_TOKEN reaches the service);
- the users' servers' environment: kernels log to the shared MLflow with no setup
  (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN), and mlproxy's extension, enabled in every
  server, answers /user/NAME/mlflow/ with a redirect to the service.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..config import ConfigError, Settings, load_settings
from ..programs import TEAM_PORT_ENV, TEAM_URL_ENV

# A user's server's token, by default (jupyterhub's `server` role), plus the service.
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server"]
# What the service does with its own token: list the Hub's users and their groups (sync), and
# reach itself through the Hub's proxy (the agent's route probe).
SERVICE_SCOPES = ["list:users", "read:users:groups", "list:groups", "read:groups"]


def configure(c, config: str | os.PathLike | None = None) -> Settings:
    """Register mlproxy's team service in a JupyterHub configuration `c`; returns mlproxy's settings."""
    settings = load_settings(Path(config) if config is not None else None)
    if not settings.team_mode:
        raise ConfigError(
            f"mlproxy's configuration ({settings.source}) is not in team mode: set [team] hub_api_url "
            "(e.g. http://127.0.0.1:8081/hub/api) there, or pass configure(c, config=PATH) naming the team stack's file"
        )
    team = settings.team
    name, access = team.service_name, f"access:services!service={team.service_name}"
    c.JupyterHub.services.append(
        {
            "name": name,
            "url": f"http://127.0.0.1:{team.service_port}",
            "api_token": _service_token(settings),
            "oauth_no_confirm": True,  # the Hub's own service: no "authorize" page
            "display": True,
            "info": {"description": "MLflow, shared by the team (mlproxy)"},
        }
    )
    c.JupyterHub.load_roles.append(
        {"name": f"{name}-service", "description": "mlproxy's MLflow service", "scopes": [*SERVICE_SCOPES, access], "services": [name]}
    )
    c.JupyterHub.extra_user_scopes.add(access)
    scopes = c.Spawner.server_token_scopes if isinstance(c.Spawner.server_token_scopes, list) else SERVER_TOKEN_SCOPES
    c.Spawner.server_token_scopes = [*scopes, access]
    c.Spawner.environment.update(
        {
            "MLFLOW_TRACKING_URI": settings.team_url.rstrip("/"),
            # The server's own Hub token (kernels inherit it): MLflow's client sends it as Bearer.
            "MLFLOW_TRACKING_TOKEN": lambda spawner: spawner.api_token,
            TEAM_URL_ENV: settings.team_url,
            TEAM_PORT_ENV: str(settings.mlflow.port),
        }
    )
    # However mlproxy was installed (an editable install leaves the data file that enables the
    # extension out), the users' servers load it: jupyter-server-proxy's own /mlflow/ handler has
    # no origin check and would otherwise answer.
    c.Spawner.args.append("--ServerApp.jpserver_extensions=mlproxy_supervisor.jupyter=True")
    return settings


def _service_token(settings: Settings) -> str:
    """The service's API token (0600). Made here if the team stack has not made it yet, owned by
    the state directory's owner: the Hub often runs as root, the stack as its own user."""
    from .. import credentials, files

    path = settings.team.service_token_file
    if not path.parent.is_dir():
        raise ConfigError(
            f"{path.parent} does not exist yet: start the team stack first (`mlproxy up` or `systemctl start mlproxy`), "
            "which makes it, then the Hub"
        )
    if path.exists() or path.is_symlink():
        return credentials.read_token(path)
    token = secrets.token_hex(24)
    owner = settings.state_dir.stat() if os.geteuid() == 0 else None  # root (the Hub) writes it for the stack's user
    files.write_atomically(path, token, 0o600, group=owner and owner.st_gid, owner=owner and owner.st_uid)
    return token
