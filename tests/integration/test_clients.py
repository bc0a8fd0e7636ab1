"""Users' two ways in besides the browser: a remote MLflow client, and a notebook kernel."""

from __future__ import annotations

import asyncio
import re
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.kernel_client import execute
from tests.support.mlflow_client import run_client

pytestmark = pytest.mark.integration

REMOTE_CLIENT = textwrap.dedent(
    """
    import json, os, sys, tempfile
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment(sys.argv[1])
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", "0.5")
        for step, value in enumerate([0.3, 0.2, 0.1]):
            mlflow.log_metric("loss", value, step=step)
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "model.txt")
            with open(path, "w") as handle:
                handle.write("weights " * 1000)
            mlflow.log_artifact(path)
    client = MlflowClient()
    fetched = client.get_run(run.info.run_id)
    downloaded = client.download_artifacts(run.info.run_id, "model.txt", tempfile.mkdtemp())
    print(json.dumps({
        "run_id": run.info.run_id,
        "artifact_uri": fetched.info.artifact_uri,
        "params": fetched.data.params,
        "loss_history": [m.value for m in client.get_metric_history(run.info.run_id, "loss")],
        "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
        "artifact_size": os.path.getsize(downloaded),
    }))
    """
)


def test_remote_client_logs_and_reads_back_through_the_route(shared_stack, tmp_path):
    experiment = f"remote-{uuid.uuid4().hex[:6]}"
    seen = run_client(REMOTE_CLIENT, shared_stack.base, shared_stack.token, experiment, timeout=120, cwd=tmp_path)
    assert seen["params"] == {"alpha": "0.5"}
    assert seen["loss_history"] == [0.3, 0.2, 0.1]
    assert seen["artifacts"] == ["model.txt"] and seen["artifact_size"] == 8000
    # Artifacts went through the server into its store, not onto the client's disk.
    assert seen["artifact_uri"].startswith("mlflow-artifacts:/")
    stored = list((shared_stack.state_dir / "artifacts").rglob("model.txt"))
    assert any(seen["run_id"] in str(path) for path in stored)
    assert not list(tmp_path.iterdir()), f"the client wrote locally: {list(tmp_path.iterdir())}"


NOTEBOOK_CELL = textwrap.dedent(
    """
    import mlflow, os
    mlflow.set_experiment("{experiment}")
    with mlflow.start_run(run_name="from-a-notebook") as run:
        mlflow.log_metric("accuracy", 0.91)
    print("RUN", run.info.run_id, os.environ["MLFLOW_TRACKING_URI"])
    """
)


def test_notebook_kernel_logs_to_the_managed_mlflow_without_setup(shared_stack):
    session = shared_stack.session()
    experiment = f"notebook-{uuid.uuid4().hex[:6]}"
    notebook = {
        "type": "notebook",
        "content": {
            "cells": [{"cell_type": "code", "source": NOTEBOOK_CELL.format(experiment=experiment), "metadata": {}, "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5,
        },
    }
    assert session.put(shared_stack.url("api/contents/track.ipynb"), json=notebook, timeout=10).status_code in (200, 201)
    opened = session.post(shared_stack.url("api/sessions"), json={"path": "track.ipynb", "type": "notebook", "kernel": {"name": "python3"}}, timeout=30)
    assert opened.status_code == 201, opened.text
    kernel_id = opened.json()["kernel"]["id"]
    try:
        saved = session.get(shared_stack.url("api/contents/track.ipynb"), timeout=10).json()
        code = "".join(saved["content"]["cells"][0]["source"])
        # In a thread of its own: an earlier test (Playwright's sync API) may own this thread's loop.
        with ThreadPoolExecutor(1) as thread:
            status, output = thread.submit(asyncio.run, execute(shared_stack.base, shared_stack.token, kernel_id, code, store_history=True)).result()
    finally:
        session.delete(shared_stack.url(f"api/sessions/{opened.json()['id']}"), timeout=30)
    assert status == "ok", output
    run_id = output.split("RUN ")[1].split()[0]
    # The kernel reaches MLflow through Jupyter's route (with the token Jupyter handed it), so the
    # link MLflow prints opens there, behind the login, in the user's browser.
    assert f"RUN {run_id} {shared_stack.base}/mlflow\n" in output
    link = re.search(r"View run from-a-notebook at: (\S+)", output).group(1)
    page, fragment = link.split("#", 1)
    assert page == f"{shared_stack.base}/mlflow/" and fragment.endswith(f"/runs/{run_id}"), link
    opened_page = session.get(page, timeout=30)
    assert opened_page.status_code == 200 and "<title>MLflow</title>" in opened_page.text
    anonymous = requests.get(page, headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"], "the link must need Jupyter's login"
    # The run shows in MLflow, read the way a user would: through the route.
    runs = session.post(
        shared_stack.url("mlflow/api/2.0/mlflow/runs/search"),
        json={"experiment_ids": [session.get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": experiment}, timeout=10).json()["experiment"]["experiment_id"]]},
        timeout=10,
    ).json()["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    assert runs[0]["data"]["metrics"][0]["value"] == 0.91


BIG_ARTIFACT = textwrap.dedent(
    """
    import hashlib, json, os, sys, tempfile
    import mlflow
    from mlflow import MlflowClient

    size = int(sys.argv[1])
    scratch = tempfile.mkdtemp()
    path = os.path.join(scratch, "big.bin")
    with open(path, "wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    mlflow.set_experiment("big-artifacts")
    with mlflow.start_run() as run:
        mlflow.log_artifact(path)
    downloaded = MlflowClient().download_artifacts(run.info.run_id, "big.bin", tempfile.mkdtemp())
    print(json.dumps({"run_id": run.info.run_id, "sent": digest, "received": hashlib.sha256(open(downloaded, "rb").read()).hexdigest()}))
    """
)


def test_artifact_over_100_mb_round_trips_through_the_route(shared_stack, tmp_path):
    """jupyter-server-proxy alone fails responses over about 100 MB (its issue #281)."""
    size = 150 << 20
    seen = run_client(BIG_ARTIFACT, shared_stack.base, shared_stack.token, str(size), timeout=600, cwd=tmp_path)
    assert seen["received"] == seen["sent"]
    # The UI's download link, as a browser follows it, streams the same bytes.
    answer = shared_stack.session().get(
        shared_stack.url("mlflow/get-artifact"), params={"path": "big.bin", "run_uuid": seen["run_id"]}, stream=True, timeout=120
    )
    assert answer.status_code == 200
    assert sum(len(chunk) for chunk in answer.iter_content(1 << 20)) == size


FAILING_CLIENT = textwrap.dedent(
    """
    import json, sys
    import mlflow

    try:
        mlflow.set_experiment(sys.argv[1])
        print(json.dumps({"error": None}))
    except Exception as error:  # what the user sees
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    """
)


@pytest.mark.parametrize("token", ["", "not-the-token"])
def test_mlflow_client_without_the_right_token_is_told_to_set_mlflow_tracking_token(shared_stack, tmp_path, token):
    experiment = f"refused-{uuid.uuid4().hex[:6]}"
    seen = run_client(FAILING_CLIENT, shared_stack.base, token, experiment, timeout=180, cwd=tmp_path)
    assert seen["error"] is not None, "the client worked without the token"
    assert "MLFLOW_TRACKING_TOKEN" in seen["error"] and "UNAUTHENTICATED" in seen["error"], seen["error"]
    assert ("token is wrong" if token else "no token") in seen["error"], seen["error"]
    assert "JSON" not in seen["error"], "the client got Jupyter's login page instead of an error it can read"
    lookup = shared_stack.session().get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": experiment}, timeout=30)
    assert lookup.status_code == 404, "the refused client created its experiment"
