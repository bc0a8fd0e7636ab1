"""Test data for the browser tier, made through the route's REST API as a remote client would."""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

from tests.stack import Stack

LOSS = [0.9, 0.6, 0.4, 0.25, 0.1]  # one value per step: the chart must show five points
NOTES = "learning rate 0.01, five epochs\nthe loss went down every epoch\n"


@dataclass(frozen=True)
class DemoRun:
    experiment_id: str
    experiment_name: str
    run_id: str
    run_name: str
    params: dict[str, str]
    notes: str
    image: bytes


def png(width: int = 96, height: int = 64) -> bytes:
    """A small RGB gradient as a PNG file, made without an imaging library."""
    rows = b"".join(
        b"\0" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def create_experiment(stack: Stack, name: str) -> str:
    answer = stack.session().post(
        stack.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": name}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()["experiment_id"]


def experiment_name(stack: Stack, experiment_id: str) -> str:
    answer = stack.session().get(
        stack.url("mlflow/api/2.0/mlflow/experiments/get"), params={"experiment_id": experiment_id}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()["experiment"]["name"]


def experiment_exists(stack: Stack, name: str) -> bool:
    answer = stack.session().get(
        stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": name}, timeout=10
    )
    if answer.status_code == 404:
        return False
    answer.raise_for_status()
    return True


def make_demo_run(stack: Stack) -> DemoRun:
    session = stack.session()
    api = stack.url("mlflow/api/2.0/mlflow")
    name = "demo-classifier"  # the shared stack is new each session; a fixed name reads well in docs
    experiment_id = create_experiment(stack, name)
    now = int(time.time() * 1000)
    created = session.post(
        f"{api}/runs/create",
        json={"experiment_id": experiment_id, "run_name": "baseline", "start_time": now},
        timeout=10,
    )
    created.raise_for_status()
    run = created.json()["run"]["info"]
    params = {"learning_rate": "0.01", "epochs": "5", "optimizer": "adam"}
    logged = session.post(
        f"{api}/runs/log-batch",
        json={
            "run_id": run["run_id"],
            "params": [{"key": key, "value": value} for key, value in params.items()],
            "metrics": [
                {"key": "loss", "value": value, "timestamp": now + step, "step": step}
                for step, value in enumerate(LOSS)
            ],
        },
        timeout=10,
    )
    logged.raise_for_status()
    # With --serve-artifacts the run's artifact URI is mlflow-artifacts:/<path>, uploaded by PUT.
    artifacts = run["artifact_uri"].removeprefix("mlflow-artifacts:/").strip("/")
    image = png()
    for file_name, content in (("notes.txt", NOTES.encode()), ("gradient.png", image)):
        put = session.put(
            stack.url(f"mlflow/api/2.0/mlflow-artifacts/artifacts/{artifacts}/{file_name}"), data=content, timeout=10
        )
        put.raise_for_status()
    finished = session.post(
        f"{api}/runs/update", json={"run_id": run["run_id"], "status": "FINISHED", "end_time": now + 5000}, timeout=10
    )
    finished.raise_for_status()
    return DemoRun(experiment_id, name, run["run_id"], "baseline", params, NOTES, image)
