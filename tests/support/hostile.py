"""The hostile stack (tests/conftest.py starts it once, for the hostile and protocol-fuzz tiers)
and the means to prove nothing changed.

MLflow is observed directly on its unix socket, as the stack's own user: that is where an attack
that got through would have left its mark.
"""

from __future__ import annotations

import http.client
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.stack import Stack
from tests.support.direct import DirectMLflow
from tests.support.ports import free_port


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def refused(self) -> bool:
        """Not served: an error status, or a redirect to Jupyter's login page."""
        if self.status >= 400:
            return True
        return self.status in (301, 302, 303, 307, 308) and "/login" in self.headers.get("location", "")


class Target:
    """The hostile tier's stack, its MLflow seen directly, and raw HTTP to Jupyter."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.token = stack.token
        # Another local origin: named in Origin headers, and where the attacking page is served.
        self.attacker_origin_port = free_port()
        self.mlflow = DirectMLflow(stack.mlflow_socket)
        self.mlflow_log = stack.configured.log_dir / "mlflow.log"
        self.experiment_id = self.create_experiment(f"hostile-base-{uuid.uuid4().hex[:6]}")
        run = self.mlflow.post("/api/2.0/mlflow/runs/create", json={"experiment_id": self.experiment_id})
        run.raise_for_status()
        self.run_id = run.json()["run"]["info"]["run_id"]

    # --- MLflow as its own user sees it ----------------------------------------------------
    def create_experiment(self, name: str) -> str:
        answer = self.mlflow.post("/api/2.0/mlflow/experiments/create", json={"name": name})
        answer.raise_for_status()
        return answer.json()["experiment_id"]

    def experiment_exists(self, name: str) -> bool:
        answer = self.mlflow.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        if answer.status_code == 404:
            return False
        answer.raise_for_status()
        return answer.json()["experiment"]["lifecycle_stage"] == "active"

    def files_named(self, name: str) -> list[Path]:
        """Files anywhere under the state directory (artifacts included) whose name holds name."""
        return [path for path in self.stack.state_dir.rglob(f"*{name}*")]

    def artifact_path(self, name: str) -> str:
        return f"{self.experiment_id}/{self.run_id}/artifacts/{name}"

    def put_artifact(self, name: str, body: bytes = b"trusted\n") -> None:
        answer = self.mlflow.put(f"/api/2.0/mlflow-artifacts/artifacts/{self.artifact_path(name)}", data=body)
        answer.raise_for_status()

    def mlflow_log_after(self, offset: int, marker: str, timeout: float = 30) -> str:
        """MLflow's log from offset, once a request carrying marker has reached it (its access log
        is written a moment after the answer): proof that every earlier line is there too."""
        self.mlflow.get("/health", params={"marker": marker})
        deadline = time.monotonic() + timeout
        while True:
            text = self.mlflow_log.read_text(errors="replace")[offset:]
            if marker in text or time.monotonic() > deadline:
                return text
            time.sleep(0.1)

    def log_size(self) -> int:
        return len(self.mlflow_log.read_text(errors="replace"))

    @property
    def jupyter_log(self) -> Path:
        return self.stack.configured.log_dir / "jupyter.log"

    def victim_is_answered_right(self) -> bool:
        """Another client's ordinary request through the route, on a connection of its own: does it
        get the answer to *its* request? MLflow names the experiment it could not find, so a
        unique name shows whose request the answer is for."""
        name = f"victim-{uuid.uuid4().hex}"
        answer = self.raw(
            "GET", f"/mlflow/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
            {"Authorization": f"token {self.token}", "Host": f"127.0.0.1:{self.stack.jupyter_port}"},
        )  # fmt: skip
        return answer.status == 404 and name.encode() in answer.body

    # --- Jupyter's port, spoken to raw --------------------------------------------------------
    def raw(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None, timeout: float = 60) -> Answer:
        """One request exactly as written: no normalisation of the path, no added credentials."""
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.jupyter_port, timeout=timeout)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.stack.jupyter_port}"

    @property
    def attacker_origin(self) -> str:
        return f"http://127.0.0.1:{self.attacker_origin_port}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mlflow_routes(mlflow_port: int) -> dict[str, str]:
    """Every spelling of MLflow's route that Jupyter serves: ours, and those jupyter-server-proxy
    would serve if our rule did not own them."""
    p = mlflow_port
    return {
        "mlflow": "/mlflow/",
        "proxy": f"/proxy/{p}/",
        "proxy-zero": f"/proxy/0{p}/",
        "proxy-zeros": f"/proxy/000{p}/",
        "localhost": f"/proxy/localhost:{p}/",
        "localhost-zero": f"/proxy/localhost:0{p}/",
        "loopback-zero": f"/proxy/127.0.0.1:0{p}/",
        "localhost-encoded": f"/proxy/%6cocalhost:{p}/",
        "loopback-encoded": f"/proxy/127.0.0.%31:{p}/",
    }


ROUTE_NAMES = list(mlflow_routes(5001))
