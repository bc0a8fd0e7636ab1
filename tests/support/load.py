"""Clients that log to a stack through /mlflow/ without pause, and the check that nothing they were
told was stored got lost.

`python -m tests.support.load write LEDGER STOPFILE SEED`: one client (the real mlflow client,
MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN from the environment) creating runs and logging
params, metrics and small artifacts until STOPFILE exists. Every write the server acknowledged
(the client call returned without error) is appended to LEDGER as one JSON line, after the call
returned. A failed call is not recorded, and the client carries on.

`python -m tests.support.load verify LEDGER...`: reads every acknowledged write back through the
same route and prints {"acknowledged": N, "lost": [...]} as its last line.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# A failed call must fail fast and visibly: MLflow's own retries (7, with backoff) would hide the
# outage inside one call and make "acknowledged" mean "eventually".
# Telemetry off: its client-side session bookkeeping raised KeyError in one of 16 parallel clients.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_DISABLE_TELEMETRY": "true"}
WRITES_PER_RUN = 30
PAUSE_AFTER_ERROR = 0.5


def write(ledger: Path, stop_file: Path, seed: int) -> None:
    from mlflow.tracking import MlflowClient

    client, rng = MlflowClient(), random.Random(seed)
    experiment = _experiment(client, f"faults-{seed}")
    scratch = Path(tempfile.mkdtemp(prefix="mlproxy-load-"))
    run, writes, step = None, 0, 0
    with open(ledger, "a") as out:

        def acknowledged(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        while not stop_file.exists():
            try:
                if run is None or writes >= WRITES_PER_RUN:
                    run, writes, step = client.create_run(experiment).info.run_id, 0, 0
                    acknowledged({"kind": "run", "run": run})
                choice = rng.random()
                if choice < 0.25:
                    key, value = f"p{writes}", str(rng.randint(0, 10**9))
                    client.log_param(run, key, value)
                    acknowledged({"kind": "param", "run": run, "key": key, "value": value})
                elif choice < 0.9:
                    value = rng.random()
                    client.log_metric(run, "loss", value, step=step)
                    acknowledged({"kind": "metric", "run": run, "key": "loss", "step": step, "value": value})
                    step += 1
                else:
                    name = f"note-{writes}.txt"
                    content = f"{run} {writes} {rng.random()}\n" * 20
                    (scratch / name).write_text(content)
                    client.log_artifact(run, str(scratch / name))
                    acknowledged({"kind": "artifact", "run": run, "path": name, "content": content})
                writes += 1
            except Exception:  # an outage: nothing acknowledged, try again shortly
                time.sleep(PAUSE_AFTER_ERROR)


def _experiment(client, name: str) -> str:
    while True:
        try:
            found = client.get_experiment_by_name(name)
            return found.experiment_id if found else client.create_experiment(name)
        except Exception:
            time.sleep(PAUSE_AFTER_ERROR)


def verify(ledgers: list[Path]) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    records = [json.loads(line) for ledger in ledgers for line in ledger.read_text().splitlines() if line.strip()]
    by_run: dict[str, list[dict]] = {}
    for record in records:
        by_run.setdefault(record["run"], []).append(record)
    lost = []
    scratch = Path(tempfile.mkdtemp(prefix="mlproxy-verify-"))
    for run_id, wanted in by_run.items():
        try:
            run = client.get_run(run_id)
        except Exception as error:
            lost.extend({**r, "why": f"run unreadable: {error}"} for r in wanted)
            continue
        history = {(m.step, m.value) for m in client.get_metric_history(run_id, "loss")}
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        for record in wanted:
            kind = record["kind"]
            param_lost = kind == "param" and run.data.params.get(record["key"]) != record["value"]
            metric_lost = kind == "metric" and (record["step"], record["value"]) not in history
            if param_lost or metric_lost:
                lost.append(record)
            elif kind == "artifact":
                if record["path"] not in artifacts:
                    lost.append(record)
                    continue
                local = client.download_artifacts(run_id, record["path"], str(scratch))
                if Path(local).read_text() != record["content"]:
                    lost.append({**record, "why": "content differs"})
    counts = {kind: sum(r["kind"] == kind for r in records) for kind in ("run", "param", "metric", "artifact")}
    return {"acknowledged": len(records), "by_kind": counts, "lost": lost}


if __name__ == "__main__":
    os.environ.update(CLIENT_ENV)
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "verify":
        print(json.dumps(verify([Path(p) for p in sys.argv[2:]])))
    else:
        sys.exit(f"usage: {__doc__}")
