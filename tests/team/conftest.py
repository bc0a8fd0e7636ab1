"""The team tier's fixtures: Hubs from tests/support/hub.py, each stopped (and checked to leave no
process) when its test ends. A missing requirement fails rather than skips: the tier must run in CI."""

from __future__ import annotations

import pytest
import requests

from tests.stack import Stack
from tests.support.hub import SETUP_HINT, Hub, missing_requirements
from tests.support.ports import free_port


@pytest.fixture
def make_hub():
    """make_hub(extra_config=..., env=..., users=...) -> a started Hub; all are stopped at teardown,
    which fails if one leaves a process or a port behind."""
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the team tier needs {'; '.join(missing)}. {SETUP_HINT}", pytrace=False)
    hubs: list[Hub] = []

    def make(**options) -> Hub:
        hub = Hub(**options)
        hubs.append(hub)
        return hub.start()

    yield make
    problems = []
    for hub in hubs:
        try:
            hub.stop()
        except AssertionError as error:
            problems.append(str(error))
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def hub(make_hub) -> Hub:
    """A Hub with the harness's base configuration only."""
    return make_hub()


class Team:
    """A JupyterHub (real users, configurable-http-proxy) and mlproxy's team stack, wired by the
    one line `mlproxy_supervisor.hub.configure(c)` in the Hub's configuration."""

    def __init__(self, hub: Hub, stack: Stack):
        self.hub, self.stack = hub, stack
        self.settings = stack.settings
        self.url = self.settings.team_url  # <hub>/services/mlflow/

    def api(self, path: str) -> str:
        return f"{self.url}{path.lstrip('/')}"

    def client(self, user: str) -> requests.Session:
        """A session logged in with `user`'s Hub API token, as an MLflow client outside the Hub."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.hub.user_token(user)}"
        return session


@pytest.fixture(scope="session")
def team(tmp_path_factory) -> Team:
    """One Hub and one team stack for the tier (private work: default_permission NO_PERMISSIONS,
    carol in the admin group); each test makes its own experiments."""
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the team tier needs {'; '.join(missing)}. {SETUP_HINT}", pytrace=False)
    state = tmp_path_factory.mktemp("team") / "state"
    config_file = state.parent / f"{state.name}.toml"  # where Stack writes its configuration
    hub = Hub(
        users=("alice", "bob", "carol", "dave"),
        extra_config=f"import mlproxy_supervisor.hub\nmlproxy_supervisor.hub.configure(c, {str(config_file)!r})\n"
        'c.JupyterHub.load_groups = {"mlflow-admins": {"users": ["carol"]}}\n'
    )
    service_port, mlflow_port, metrics_port = free_port(), free_port(), free_port()
    # The Hub's configure() reads this file alone: every value the stack runs with is in it.
    config = (
        f'state_dir = "{state}"\n[mlflow]\nport = {mlflow_port}\n[agent]\nmetrics_port = {metrics_port}\n[team]\nhub_api_url = "http://127.0.0.1:{hub.hub_port}/hub/api"\n'
        f'public_url = "{hub.base}"\nservice_port = {service_port}\ndefault_permission = "NO_PERMISSIONS"\n'
        "user_sync_period = 2\n"  # a user added to the Hub is an MLflow user within seconds
    )
    stack = Stack(state, jupyter_port=service_port, mlflow_port=mlflow_port, metrics_port=metrics_port, config=config)
    stack.start(wait=False)  # the stack first: it makes the state directory and the service's token
    try:
        hub.start()
        stack.wait_ready(timeout=300)
        yield Team(hub, stack)
    finally:
        hub.stop()
        assert stack.stop() == 0
