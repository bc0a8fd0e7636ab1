"""A container's life as a user lives it: log a run from the host, `podman stop`, `podman start`,
`podman rm`, then a new container on the same named volume. The run, its metrics and its artifact
must survive all of it, stops must be clean, and a generated token is printed once, ever."""

from __future__ import annotations

import textwrap
import time

import pytest

from tests.container.conftest import authorized, measure
from tests.support.mlflow_client import run_client

pytestmark = pytest.mark.container

CLIENT = textwrap.dedent(
    """
    import json, os, sys, tempfile
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    if sys.argv[1] == "log":
        mlflow.set_experiment("container-lifecycle")
        with mlflow.start_run() as run:
            mlflow.log_param("alpha", "0.5")
            for step, value in enumerate([0.3, 0.2, 0.1]):
                mlflow.log_metric("loss", value, step=step)
            with tempfile.TemporaryDirectory() as scratch:
                path = os.path.join(scratch, "model.txt")
                with open(path, "w") as handle:
                    handle.write("weights " * 1000)
                mlflow.log_artifact(path)
        run_id = run.info.run_id
    else:
        run_id = sys.argv[2]
    fetched = client.get_run(run_id)
    downloaded = client.download_artifacts(run_id, "model.txt", tempfile.mkdtemp())
    print(json.dumps({
        "run_id": run_id,
        "experiment": client.get_experiment(fetched.info.experiment_id).name,
        "params": fetched.data.params,
        "loss": [m.value for m in client.get_metric_history(run_id, "loss")],
        "artifact_uri": fetched.info.artifact_uri,
        "artifact": open(downloaded).read(),
    }))
    """
)

STOP_BUDGET = 8.0  # seconds
story: dict = {}  # what one test of this module hands to the next (they run in file order)


def mlflow_client(container, token: str, *args: str) -> dict:
    return run_client(CLIENT, container.base, token, *args, timeout=180)


def assert_run_intact(seen: dict) -> None:
    assert seen["experiment"] == "container-lifecycle"
    assert seen["params"] == {"alpha": "0.5"}
    assert seen["loss"] == [0.3, 0.2, 0.1]
    assert seen["artifact"] == "weights " * 1000
    assert seen["artifact_uri"].startswith("mlflow-artifacts:/")  # stored by the server, in the volume


@pytest.fixture(scope="module")
def volume(make_volume):
    return make_volume()


@pytest.fixture(scope="module")
def first(volume, start_container):
    container = start_container(volume)
    container.token = container.exec("cat", "/var/lib/mlproxy/jupyter_token").stdout.strip()
    return container


def test_a_run_logged_from_the_host_lands_in_the_volume(first):
    seen = mlflow_client(first, first.token, "log")
    assert_run_intact(seen)
    stored = first.exec("find", "/var/lib/mlproxy/artifacts", "-name", "model.txt").stdout
    assert seen["run_id"] in stored
    story["run_id"] = seen["run_id"]


def test_podman_stop_is_clean_and_quick(first):
    seconds = first.stop()
    state = first.state()
    measure("podman stop", f"{seconds:.1f} s")
    assert state["ExitCode"] == 0 and not state.get("OOMKilled")
    logs = first.logs()
    assert "mlproxy: stopping (Jupyter, then MLflow)..." in logs
    assert "mlproxy: stopped" in logs.splitlines()[-1]
    assert "SIGKILL" not in logs and "killing" not in logs.lower()
    # podman's default grace is 10 s, after which it sends SIGKILL (exit 137): stay well clear.
    # Measured 2.4-5.5 s on 2 cores (10 runs under load: mean 4.6 s); most of it is supervisord's
    # 1 s event loop, one tick per program stopped.
    assert seconds < STOP_BUDGET, f"podman stop took {seconds:.1f} s"


def test_restarted_container_keeps_the_run_and_does_not_print_the_token_again(first):
    started = time.monotonic()
    first.start()
    first.wait_healthy()
    measure("podman start to healthy (existing volume)", f"{time.monotonic() - started:.1f} s")
    logs = first.logs()  # both runs of this container
    assert logs.count("mlproxy: ready in") == 2
    assert logs.count(first.token) == 1, "the generated token was printed again on restart"
    assert_run_intact(mlflow_client(first, first.token, "read", story["run_id"]))


def test_runs_survive_podman_rm_and_a_new_container_on_the_same_volume(first, volume, start_container):
    first.stop()
    first.remove()
    second = start_container(volume)
    # The token lives in the volume too: the same one still works, and it is not printed again.
    assert authorized(first.token).get(f"{second.base}/mlflow/health", timeout=10).text == "OK"
    assert first.token not in second.logs()
    assert_run_intact(mlflow_client(second, first.token, "read", story["run_id"]))
    seconds = second.stop()
    assert second.state()["ExitCode"] == 0, second.logs()[-2000:]
    assert seconds < STOP_BUDGET
