"""Team mode under faults, while MLflow clients with Hub tokens write through the Hub's proxy: the
team stack's agent brings MLflow and the service back (JupyterHub only polls the services it runs
itself, and never finds a frozen one), and a Hub restart does not stop the writes of clients whose
tokens the service has checked. No acknowledged write is lost."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.faults import Faults, Load

pytestmark = pytest.mark.team


def wait_for_more(load: Load, count: int, timeout: float = 120) -> int:
    """Waits until the clients have more acknowledged writes than `count`; returns the new count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (now := load.acknowledged()) > count:
            return now
        time.sleep(0.2)
    raise AssertionError(f"the clients' writes did not go on: {count} acknowledged after {timeout:.0f} s")


def agent_restarts(team, service: str) -> list[dict]:
    events = team.stack.status().get("events", [])
    return [event for event in events if event.get("service") == service and event.get("event") == "restart"]


def test_mlflow_and_the_service_killed_and_frozen_under_writing_clients_come_back(team, tmp_path):
    load = Load(team.stack, tmp_path, clients=2, seed=23, tracking=(team.url.rstrip("/"), team.hub.user_token("alice")))
    faults = Faults(team.stack, seed=23)
    try:
        count = wait_for_more(load, 0, timeout=300)
        for kind in ("kill-mlflow", "freeze-mlflow", "kill-service", "freeze-service"):
            outcome = faults.inject(kind)
            assert outcome.recovered, f"{kind} not recovered in {outcome.seconds:.0f} s:\n{team.stack.tail()}"
            print(f"{kind}: READY again {outcome.seconds:.1f} s after the fault")
            count = wait_for_more(load, count)
        # A frozen process is RUNNING to supervisord: only the agent's liveness probe finds it.
        assert agent_restarts(team, "mlflow") and agent_restarts(team, "service"), team.stack.status().get("events")
    finally:
        load.stop()
    result = load.verify()
    assert result["acknowledged"] > 0 and result["lost"] == [], result


def test_a_hub_restart_leaves_clients_with_checked_tokens_writing(team, tmp_path):
    alice = team.hub.user_token("alice")
    load = Load(team.stack, tmp_path, clients=1, seed=29, tracking=(team.url.rstrip("/"), alice))
    fresh = team.hub.user_token("bob")  # never shown to the service before the Hub goes down
    search = team.api("api/2.0/mlflow/experiments/search?max_results=1")
    try:
        count = wait_for_more(load, 0, timeout=300)
        with team.hub.hub_down():
            assert requests.get(team.hub.api(""), timeout=30).status_code >= 500, "the Hub still answers"
            # alice's token was checked a moment ago: the service serves her without the Hub.
            count = wait_for_more(load, count)
            answer = requests.get(search, headers={"Authorization": f"Bearer {alice}"}, timeout=60)
            assert answer.status_code == 200, answer.text
            # bob's cannot be checked now: a 503 the client retries, not a 500.
            answer = requests.get(search, headers={"Authorization": f"Bearer {fresh}"}, timeout=60)
            assert answer.status_code == 503 and "Retry-After" in answer.headers, (answer.status_code, answer.text)
        answer = requests.get(search, headers={"Authorization": f"Bearer {fresh}"}, timeout=60)
        assert answer.status_code == 200, answer.text
        wait_for_more(load, load.acknowledged())
    finally:
        load.stop()
    result = load.verify()
    assert result["acknowledged"] > 0 and result["lost"] == [], result
