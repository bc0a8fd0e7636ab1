"""Team mode's pure parts: the settings, what `hub.configure(c)` writes into a real JupyterHub
configuration object, the programs and launch files, the agent's probes and start order."""

from __future__ import annotations

import os
import stat

import pytest
from traitlets.config import Config

from mlproxy_supervisor import hub, launch, programs, supervisord_conf
from mlproxy_supervisor.agent import probes
from mlproxy_supervisor.agent.reconcile import Memory, Observation, reconcile
from mlproxy_supervisor.config import AgentSettings, ConfigError, Settings, load_settings
from mlproxy_supervisor.rpc import ProcessInfo

TEAM = {"hub_api_url": "http://127.0.0.1:8081/hub/api", "public_url": "http://hub.example:8000"}


def team_settings(tmp_path, **team) -> Settings:
    return Settings(state_dir=tmp_path / "state", team={**TEAM, **team})


def test_hub_api_url_switches_team_mode_on(tmp_path):
    assert not Settings(state_dir=tmp_path).team_mode
    settings = team_settings(tmp_path)
    assert settings.team_mode and settings.services == ("mlflow", "service")
    assert settings.team_url == "http://hub.example:8000/services/mlflow/"
    assert settings.team.service_token_file == tmp_path / "state" / "hub_service_token"


def test_team_mode_refuses_mlflow_on_tcp(tmp_path):
    with pytest.raises(ValueError, match='team mode needs mlflow.listen = "socket"'):
        Settings(state_dir=tmp_path, team=TEAM, mlflow={"listen": "tcp"})


@pytest.mark.parametrize("field", ["hub_api_url", "public_url"])
def test_team_urls_must_be_http(tmp_path, field):
    with pytest.raises(ValueError, match="give an http:// or https:// URL"):
        Settings(state_dir=tmp_path, team={**TEAM, field: "hub.example:8000"})


def test_the_service_port_must_differ_from_mlflows(tmp_path):
    with pytest.raises(ValueError, match="ports must differ"):
        Settings(state_dir=tmp_path, team={**TEAM, "service_port": 5001})


def test_team_programs_launch_files_and_environment(tmp_path):
    settings = team_settings(tmp_path)
    assert supervisord_conf.programs(settings) == ("agent", "mlflow", "service")
    argv, env = launch.mlflow_command(settings)
    assert env[programs.TEAM_ENV] == "1" and env["MLFLOW_AUTH_CONFIG_PATH"] == str(settings.mlflow_auth_config)
    # The socket's peers are users of the Hub in team mode, not the stack's own user.
    assert programs.SOCKET_PEERS_LOCAL_ENV not in env
    spec = launch.launch_spec("mlflow", settings)
    assert spec.mlflow.auth_secret_file == str(settings.mlflow_auth_secret)
    assert launch.launch_spec("service", settings).argv[-1] == "mlproxy_supervisor.hub.service"
    conf = supervisord_conf.render_program("service", settings)
    assert "autostart=false" in conf and "service.json" in conf  # the agent starts it once MLflow is ready


def test_the_agent_probes_the_route_through_the_hubs_proxy(tmp_path):
    settings = team_settings(tmp_path)
    checks = probes.checks(settings)
    assert set(checks) == {("mlflow", "liveness"), ("mlflow", "readiness"), ("service", "liveness"), ("service", "readiness"), ("route", "readiness")}
    route = checks[("route", "readiness")]
    assert all(check.url.startswith("http://hub.example:8000/services/mlflow/") and check.authenticated for check in route)
    # MLflow's auth app wants a user on its socket: the agent's own, reserved name.
    assert checks[("mlflow", "readiness")][0].as_agent
    # The service's readiness must not depend on the Hub (a Hub down must not get it restarted).
    assert not any(check.authenticated for check in checks[("service", "readiness")])


def test_in_an_ordered_start_the_service_starts_once_mlflow_is_ready():
    def info(name, state="RUNNING", pid=7):
        running = state == "RUNNING"
        return ProcessInfo(name, state, pid if running else 0, 990.0 if running else 0.0, 0.0, 1000.0, 0, "")

    memory = Memory.of(programs.TEAM_SERVICES)
    seen = Observation(1000.0, "RUNNING", {"mlflow": info("mlflow", pid=101), "service": info("service", "STOPPED")}, (), {}, 1000.0, {})
    memory, actions, _ = reconcile(memory, seen, AgentSettings(start_order="ordered"))
    assert actions == []  # MLflow runs but is not ready yet: the service waits
    assert memory.services["service"].phase.value == "waiting"


# --- hub.configure(c) -----------------------------------------------------------------------------
def applied(value, initial):
    """A configuration value as JupyterHub will see it: traitlets applies lazy edits (append,
    update, add) to the trait's default."""
    return value.get_value(initial) if hasattr(value, "get_value") else value


@pytest.fixture
def team_config_file(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLPROXY_"):
            monkeypatch.delenv(name)
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "mlproxy.toml"
    path.write_text(f'state_dir = "{state}"\n[team]\nhub_api_url = "{TEAM["hub_api_url"]}"\npublic_url = "{TEAM["public_url"]}"\n')
    return path


def test_configure_registers_the_service_its_roles_scopes_and_the_servers_environment(team_config_file):
    c = Config()
    c.JupyterHub.services = [{"name": "other", "api_token": "x" * 16}]
    settings = hub.configure(c, team_config_file)
    token = settings.team.service_token_file.read_text()
    service = c.JupyterHub.services[-1]
    assert service == {"name": "mlflow", "url": "http://127.0.0.1:5002", "api_token": token, "oauth_no_confirm": True,
                       "display": True, "info": {"description": "MLflow, shared by the team (mlproxy)"}}  # fmt: skip
    assert c.JupyterHub.services[0]["name"] == "other", "the Hub's own services are kept"
    assert stat.S_IMODE(settings.team.service_token_file.stat().st_mode) == 0o600
    access = "access:services!service=mlflow"
    assert applied(c.JupyterHub.extra_user_scopes, set()) == {access}
    role = next(role for role in applied(c.JupyterHub.load_roles, []) if role["services"] == ["mlflow"])
    assert access in role["scopes"] and "list:users" in role["scopes"]
    assert c.Spawner.server_token_scopes == [*hub.SERVER_TOKEN_SCOPES, access]
    environment = applied(c.Spawner.environment, {})
    assert environment["MLFLOW_TRACKING_URI"] == "http://hub.example:8000/services/mlflow"

    class Spawner:
        api_token = "the-servers-own-token"

    assert environment["MLFLOW_TRACKING_TOKEN"](Spawner) == "the-servers-own-token"
    assert environment[programs.TEAM_URL_ENV] == settings.team_url
    assert "--ServerApp.jpserver_extensions=mlproxy_supervisor.jupyter=True" in applied(c.Spawner.args, [])


def test_configure_keeps_the_servers_token_scopes_the_hub_was_given(team_config_file):
    c = Config()
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "read:users:name!user"]
    hub.configure(c, team_config_file)
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server", "read:users:name!user", "access:services!service=mlflow"]


def test_configure_refuses_a_single_user_configuration(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLPROXY_"):
            monkeypatch.delenv(name)
    path = tmp_path / "mlproxy.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n')
    c = Config()
    with pytest.raises(ConfigError, match=r"not in team mode: set \[team\] hub_api_url"):
        hub.configure(c, path)
    assert "services" not in c.JupyterHub, "nothing registered"


def test_configure_says_to_start_the_stack_first_when_its_state_directory_is_missing(team_config_file):
    settings = load_settings(team_config_file)
    settings.state_dir.rmdir()
    with pytest.raises(ConfigError, match="start the team stack first"):
        hub.configure(Config(), team_config_file)


def test_env_prints_the_team_url_and_says_the_token_is_the_users_hub_token(tmp_path, monkeypatch, capsys):
    from mlproxy_supervisor import client_env
    from mlproxy_supervisor.status_document import StatusDocument

    monkeypatch.setattr(client_env, "current_status", lambda settings: StatusDocument(overall="ready", summary="ready"))
    assert client_env.run(team_settings(tmp_path), "sh") == 0
    out, err = capsys.readouterr()
    assert out == "export MLFLOW_TRACKING_URI=http://hub.example:8000/services/mlflow\n"
    assert "your own Hub API token" in err and "http://hub.example:8000/hub/token" in err and "$JUPYTERHUB_API_TOKEN" in err


def test_logs_lists_the_team_stacks_programs(tmp_path):
    from mlproxy_supervisor import logs

    assert list(logs.log_files(team_settings(tmp_path))) == ["supervisord", "agent", "mlflow", "service"]
