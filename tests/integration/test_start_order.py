"""The order of traffic in a parallel start (agent.start_order = "parallel"; "ordered" is the default): MLflow and
Jupyter start at once, and a client polling MLflow through Jupyter from the moment `mlproxy up`
starts gets only 503 + Retry-After (never a 500, a 502 or a hang) until the agent has found MLflow
ready; MLflow itself gets no request before that. The ordered start is every other stack's."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import requests

from tests.stack import Stack

pytestmark = pytest.mark.integration


@dataclass
class Answer:
    sent: float  # wall clock
    received: float
    status: int | None  # None: no HTTP answer (see error)
    retry_after: str | None = None
    error_code: str | None = None
    error: str = ""  # "refused" before Jupyter listens; anything else is a failure


class Poller:
    """A client that asks MLflow's REST API through /mlflow/ every 50 ms, as a script started with
    the stack would, and keeps every answer."""

    def __init__(self, stack: Stack, token: str, marker: str):
        self.url = stack.url(f"mlflow/api/2.0/mlflow/experiments/search?max_results=2&marker={marker}")
        self.headers = {"Authorization": f"token {token}"}
        self.answers: list[Answer] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.is_set():
            sent = time.time()
            try:
                # A fresh connection per request: each one meets the stack as it is at that moment.
                answer = requests.get(self.url, headers=self.headers, timeout=60)
            except requests.ConnectionError as error:
                refused = "Connection refused" in str(error)
                self.answers.append(Answer(sent, time.time(), None, error="refused" if refused else repr(error)))
            except requests.Timeout:
                self.answers.append(Answer(sent, time.time(), None, error="no answer within 60 s"))
            else:
                body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
                self.answers.append(Answer(sent, time.time(), answer.status_code, answer.headers.get("Retry-After"), body.get("error_code")))
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(90)

    def first(self, status: int) -> Answer | None:
        return next((answer for answer in self.answers if answer.status == status), None)


def _agent_event(stack: Stack, service: str, kind: str) -> float:
    """When the agent recorded the event (its log: UTC, milliseconds, rounded down)."""
    for line in (stack.state_dir / "logs" / "agent.log").read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        if rest.startswith(f"{service} {kind}"):
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    raise AssertionError(f"no '{service} {kind}' event in the agent's log:\n{stack.tail()}")


def _spawned(stack: Stack, program: str) -> float:
    for line in (stack.state_dir / "logs" / "supervisord.log").read_text().splitlines():
        if f"spawned: '{program}'" in line:
            stamp, millis = line[:23].split(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    raise AssertionError(f"supervisord never spawned {program}:\n{stack.tail()}")


# The agent polls a starting service every 2 s here, not 0.1 s: MLflow answers long before the
# agent's next look, so a request let through on MLflow's own say-so would show.
SLOW_STARTUP_PROBES = """
[agent]
start_order = "parallel"
startup_period = 2
"""


def test_requests_wait_for_the_agent_to_find_mlflow_ready_in_a_parallel_start(tmp_path):
    token, marker = secrets.token_hex(24), uuid.uuid4().hex
    stack = Stack(tmp_path / "state", env={"JUPYTER_TOKEN": token}, config=SLOW_STARTUP_PROBES).start(wait=False)
    poller = Poller(stack, token, marker)
    frozen = None
    try:
        # MLflow held still as soon as it is spawned, until Jupyter has answered a request: so the
        # client meets Jupyter up and MLflow not ready, however the two race on this machine.
        deadline = time.monotonic() + 120
        while frozen is None and time.monotonic() < deadline:
            try:
                frozen = stack.pid("mlflow") or None
            except Exception:  # supervisord not answering yet
                time.sleep(0.02)
        assert frozen, f"MLflow was not spawned within 120 s:\n{stack.tail()}"
        os.killpg(frozen, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 120
            while poller.first(503) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.killpg(frozen, signal.SIGCONT)
        stack.wait_ready()
        deadline = time.monotonic() + 60
        while poller.first(200) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # a few more answers after the first success
    finally:
        poller.stop()
        assert stack.stop() == 0

    answers = poller.answers
    held = [answer for answer in answers if answer.status is not None and answer.status != 200]
    assert poller.first(503) is not None, f"Jupyter never answered while MLflow was starting: {answers[:5]}\n{stack.tail()}"
    success = poller.first(200)
    assert success is not None, f"no request went through: {held[-3:]}\n{stack.tail()}"
    before = answers[: answers.index(success)]
    assert not [a for a in before if a.error and a.error != "refused"], "a request hung or broke before MLflow was ready"
    assert all((a.status, a.retry_after, a.error_code) == (503, "5", "TEMPORARILY_UNAVAILABLE") for a in before if a.status), (
        f"before MLflow was ready: {sorted({(a.status, a.error_code) for a in before if a.status})}")  # fmt: skip
    assert all(a.status == 200 for a in answers[answers.index(success):]), "MLflow's requests went through, then failed"
    # The order: Jupyter was spawned before MLflow was ready (a parallel start), and the first
    # request went through only after the agent found MLflow ready and opened its route.
    mlflow_ready, admitted = _agent_event(stack, "mlflow", "ready"), _agent_event(stack, "mlflow", "admitted")
    assert _spawned(stack, "jupyter") < mlflow_ready
    assert mlflow_ready <= admitted <= success.received
    # MLflow saw exactly the requests that went through: none of the refused ones reached it.
    mlflow_log = (stack.state_dir / "logs" / "mlflow.log").read_text()
    assert mlflow_log.count(marker) == sum(a.status == 200 for a in answers)
