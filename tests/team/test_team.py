"""Team mode with a real JupyterHub: real Unix users' kernels log to the shared MLflow with no setup,
as their Hub names, and see each other's work only as MLflow's permissions say. Each refusal also
checks that nothing changed."""

from __future__ import annotations

import http.client
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from mlproxy_supervisor.programs import ADMIN_HEADER, PROOF_HEADER, USER_HEADER

pytestmark = pytest.mark.team

API = "api/2.0/mlflow"
GRANT = "api/3.0/mlflow/users/permissions"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_experiment(team, user: str) -> str:
    answer = team.client(user).post(team.api(f"{API}/experiments/create"), json={"name": unique(f"{user}-work")}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["experiment_id"]


def runs_in(team, experiment_id: str) -> list[dict]:
    """The experiment's runs, as carol (a Hub admin, so an MLflow admin) sees them."""
    answer = team.client("carol").post(team.api(f"{API}/runs/search"), json={"experiment_ids": [experiment_id]}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json().get("runs", [])


def run_by(team, user: str, run_id: str) -> dict:
    answer = team.client(user).get(team.api(f"{API}/runs/get"), params={"run_id": run_id}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["run"]


LOG_A_RUN = """
import os, mlflow
mlflow.set_experiment({experiment!r})
with mlflow.start_run(tags={{"mlflow.user": "somebody-else"}}) as run:
    mlflow.log_param("who", "notebook")
    mlflow.log_metric("loss", 0.25)
print(os.environ["MLFLOW_TRACKING_URI"], run.info.run_id)
"""


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_a_kernel_logs_to_the_shared_mlflow_with_no_setup_as_its_hub_user(team, user):
    team.hub.spawn(user)
    experiment = unique(f"notebook-{user}")
    status, output = team.hub.execute(user, LOG_A_RUN.format(experiment=experiment), timeout=300)
    assert status == "ok", output
    uri, run_id = output.splitlines()[-1].split()
    assert uri == team.url.rstrip("/")
    # MLflow's "View run at" link points where the user's browser reaches MLflow: the service.
    assert f"View run {''}" in output or team.url in output, output
    run = run_by(team, user, run_id)
    # The kernel's OS user is the Hub user here, and the client forged mlflow.user: the server
    # stores the Hub name either way.
    tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
    assert (run["info"]["user_id"], tags["mlflow.user"]) == (user, user)
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"who": "notebook"}


def test_private_work_until_granted_then_revoked(team):
    experiment_id = create_experiment(team, "alice")
    bob = team.client("bob")
    read = bob.get(team.api(f"{API}/experiments/get"), params={"experiment_id": experiment_id}, timeout=60)
    write = bob.post(team.api(f"{API}/runs/create"), json={"experiment_id": experiment_id}, timeout=60)
    assert (read.status_code, write.status_code) == (403, 403), (read.text, write.text)
    assert runs_in(team, experiment_id) == []

    alice = team.client("alice")
    grant = {"username": "bob", "resource_type": "experiment", "resource_id": experiment_id}
    answer = alice.post(team.api(f"{GRANT}/grant"), json={**grant, "permission": "EDIT"}, timeout=60)
    assert answer.status_code == 200, answer.text
    created = bob.post(team.api(f"{API}/runs/create"), json={"experiment_id": experiment_id}, timeout=60)
    assert created.status_code == 200, created.text
    assert created.json()["run"]["info"]["user_id"] == "bob"

    answer = alice.post(team.api(f"{GRANT}/revoke"), json=grant, timeout=60)
    assert answer.status_code == 200, answer.text
    refused = bob.post(team.api(f"{API}/runs/create"), json={"experiment_id": experiment_id}, timeout=60)
    assert refused.status_code == 403, refused.text
    assert [run["info"]["user_id"] for run in runs_in(team, experiment_id)] == ["bob"]


def test_bob_cannot_pass_as_alice_with_any_header(team):
    experiment_id = create_experiment(team, "alice")
    # Every spelling a server downstream might read as the caller's name: Starlette folds
    # X_MLproxy_User into X-MLproxy-User, and the proof header of the service is forged too.
    forged = {USER_HEADER: "alice", ADMIN_HEADER: "true", PROOF_HEADER: "0" * 64, "X_MLproxy_User": "alice",
              "X-MLproxy_Admin": "true", "X-Forwarded-User": "alice", "Remote-User": "alice", "X-Forwarded-For": "127.0.0.1"}  # fmt: skip
    bob = team.client("bob")
    answer = bob.post(team.api(f"{API}/runs/create"), json={"experiment_id": experiment_id}, headers=forged, timeout=60)
    assert answer.status_code == 403, answer.text
    assert runs_in(team, experiment_id) == []
    # On his own experiment the same headers change nothing either: the run is bob's.
    own = create_experiment(team, "bob")
    answer = bob.post(team.api(f"{API}/runs/create"), json={"experiment_id": own, "user_id": "alice"}, headers=forged, timeout=60)
    assert answer.status_code == 200 and answer.json()["run"]["info"]["user_id"] == "bob", answer.text
    # Straight at the service's port (not through the Hub's proxy): the same login is asked for.
    direct = requests.post(f"{team.settings.service_url}{API}/runs/create", json={"experiment_id": own}, headers=forged, timeout=60)
    assert direct.status_code == 401, direct.text
    assert [run["info"]["user_id"] for run in runs_in(team, own)] == ["bob"]


def test_bobs_kernel_cannot_reach_mlflows_socket(team):
    team.hub.spawn("bob")
    code = f"""
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({str(team.settings.mlflow_socket)!r})
    print("connected")
except PermissionError as error:
    print("EACCES" if error.errno == 13 else error)
"""
    assert team.hub.execute("bob", code) == ("ok", "EACCES\n")


def test_no_token_is_a_401_naming_what_to_set_and_a_token_without_the_scope_a_403(team):
    answer = requests.post(team.api(f"{API}/experiments/create"), json={"name": unique("anonymous")}, timeout=60)
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "UNAUTHENTICATED" and "MLFLOW_TRACKING_TOKEN" in answer.json()["message"]
    # The harness's own Hub service may administer users, not reach mlflow.
    name = unique("scopeless")
    answer = team.hub.admin.post(team.api(f"{API}/experiments/create"), json={"name": name}, timeout=60)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error_code"] == "PERMISSION_DENIED"
    found = team.client("carol").get(team.api(f"{API}/experiments/get-by-name"), params={"experiment_name": name}, timeout=60)
    assert found.status_code == 404, "nothing was created"


def test_a_users_server_redirects_its_mlflow_routes_to_the_service(team):
    team.hub.spawn("alice")
    session = team.hub.login("alice")
    for path, expected in [
        ("user/alice/mlflow/", ""),
        ("user/alice/mlflow/api/2.0/mlflow/experiments/search?max_results=1", "api/2.0/mlflow/experiments/search?max_results=1"),
        (f"user/alice/proxy/{team.stack.mlflow_port}/health", "health"),
    ]:
        answer = session.get(team.hub.url(path), allow_redirects=False, timeout=60)
        assert answer.status_code == 307, (path, answer.status_code, answer.text[:300])
        assert answer.headers["Location"] == team.url + expected
    # Followed as a browser does (it asks for a page), it is MLflow behind the Hub's login: the
    # Hub's login cookie carries alice through the service's OAuth flow.
    answer = session.get(team.hub.url("user/alice/mlflow/"), headers={"Accept": "text/html"}, timeout=60)
    assert answer.status_code == 200 and answer.url.startswith(team.url), answer.url
    assert "<title>MLflow" in answer.text or "mlflow" in answer.text.lower()


@pytest.mark.parametrize("path", ["ajax-api/3.0/mlflow/assistant/config", "ajax-api/3.0/mlflow/%61ssistant/config", "ajax-api/3.0/mlflow%2Fassistant/providers"])
def test_the_assistant_is_not_served_in_team_mode_however_spelled(team, path):
    answer = team.client("alice").get(team.api(path), timeout=60)
    assert answer.status_code == 403 and "Assistant" in answer.json()["message"], answer.text


def test_odd_paths_are_answered_not_crashed(team):
    """A target no URL parser reads, and header breaks in a redirect's path: 400 and a 307 whose
    Location keeps them encoded, never a 500."""
    connection = http.client.HTTPConnection("127.0.0.1", team.hub.public_port, timeout=60)
    connection.request("GET", urlsplit(team.url).path + "/[x", headers={"Authorization": f"Bearer {team.hub.user_token('alice')}"})
    answer = connection.getresponse()
    assert answer.status == 400, answer.read()
    connection.close()
    team.hub.spawn("alice")
    session = team.hub.login("alice")
    answer = session.get(team.hub.url("user/alice/mlflow/a%0d%0aSet-Cookie:%20x=1?b=1"), allow_redirects=False, timeout=60)
    assert answer.status_code == 307 and answer.headers["Location"] == team.url + "a%0D%0ASet-Cookie:%20x=1?b=1"
    assert "x" not in answer.cookies


def test_hub_users_exist_in_mlflow_before_their_first_visit(team):
    """dave is a Hub user who never called MLflow: the service's walk of the Hub's user list made
    him an MLflow user, so alice can grant him her experiment."""
    answer = team.hub.admin.post(team.hub.api("users/dave"), timeout=60)
    assert answer.status_code in (201, 409), answer.text  # made now, or by an earlier run of this test
    experiment_id = create_experiment(team, "alice")
    grant = {"username": "dave", "resource_type": "experiment", "resource_id": experiment_id, "permission": "READ"}
    deadline = time.monotonic() + 10 * team.settings.team.user_sync_period
    while True:
        answer = team.client("alice").post(team.api(f"{GRANT}/grant"), json=grant, timeout=60)
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert answer.status_code == 200, f"dave never became an MLflow user: {answer.text}"


def test_doctor_checks_the_service_and_the_route_through_the_hub(team):
    result = team.stack.mlproxy("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok  ] Hub service reaches MLflow" in result.stdout
    assert "[ok  ] MLflow through the Hub's proxy" in result.stdout


def test_env_url_and_logs_from_a_second_shell_name_the_teams_mlflow(team, tmp_path):
    """The operator's second shell (no configuration): the team's URL, and each user's own Hub token."""
    env = team.stack.second_shell("env", cwd=tmp_path)
    assert env.returncode == 0, env.stderr
    assert env.stdout == f"export MLFLOW_TRACKING_URI={team.url.rstrip('/')}\n"
    assert "your own Hub API token" in env.stderr, env.stderr
    url = team.stack.second_shell("url", cwd=tmp_path)
    assert (url.returncode, url.stdout.strip()) == (0, team.url), url.stderr
    logs = team.stack.second_shell("logs", "service", "-n", "5", cwd=tmp_path)
    assert logs.returncode == 0 and logs.stdout.strip(), logs.stderr
