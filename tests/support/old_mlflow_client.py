"""Run by the OLD MLflow's Python (tests/support/old_mlflow.py): log through its own server, the
way a user of that version did, and print what was logged as one JSON line.

usage: python old_mlflow_client.py TRACKING_URI SCRATCH_DIR
Only the old client's API and the standard library: this file must work with MLflow 2.0.
"""

import json
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

uri, scratch = sys.argv[1], Path(sys.argv[2])
mlflow.set_tracking_uri(uri)  # the artifact repository resolves mlflow-artifacts: against it
client = MlflowClient()
experiment = client.create_experiment("made-by-an-old-mlflow", tags={"origin": "old"})
logged = {"experiment": experiment, "runs": {}}
for number in range(3):
    run = client.create_run(experiment, tags={"mlflow.runName": f"old-run-{number}", "team": f"t{number}"})
    run_id = run.info.run_id
    params = {"learning_rate": str(0.1 * (number + 1)), "layers": str(number + 2)}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    metrics = {"loss": [], "accuracy": []}
    for step in range(5):
        for key, value in (("loss", 1.0 / (step + 1 + number)), ("accuracy", 0.5 + 0.1 * step)):
            client.log_metric(run_id, key, value, step=step)
            metrics[key].append([step, value])
    client.set_tag(run_id, "stage", "done")
    artifacts = {}
    for path, content in ((f"notes-{number}.txt", f"run {number} notes\n" * 50), (f"model/weights-{number}.bin", "w" * 3000)):
        local = scratch / run_id / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
        client.log_artifact(run_id, str(local), artifact_path=str(Path(path).parent) if "/" in path else None)
        artifacts[path] = content
    client.set_terminated(run_id)
    logged["runs"][run_id] = {
        "name": f"old-run-{number}",
        "params": params,
        "metrics": metrics,
        "tags": {"team": f"t{number}", "stage": "done"},
        "artifacts": artifacts,
    }
print(json.dumps(logged))
