"""Faults while clients write: kill -9 and SIGSTOP of MLflow, Jupyter and the agent, a frozen
MLflow while it starts again, power cuts (SIGKILL of the whole tree, then `mlproxy up`), a frozen
supervisord, and compound faults behind a frozen agent (found by `mlproxy up`'s watcher). After
each fault the stack is READY again with nothing left of what the fault hit; at the end every
acknowledged write is stored.

The short version (MLPROXY_FAULTS faults, default 20); benchmarks/faults.py runs 100 or more.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.stack import Stack
from tests.support.faults import KINDS, Faults, Load, run

pytestmark = pytest.mark.faults

FAULTS = int(os.environ.get("MLPROXY_FAULTS", "20"))
SEED = int(os.environ.get("MLPROXY_FAULTS_SEED", str(random.randrange(10**6))))
CLIENTS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults") / "state").start(timeout=300)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def rollback_journal_stack(tmp_path_factory):
    """The stack in SQLite's rollback-journal mode (`sqlite_journal_mode = "delete"`, for a database
    on a network filesystem): the mode that leaves a hot journal when a writer dies."""
    config = '[mlflow]\nsqlite_journal_mode = "delete"\n'
    stack = Stack(tmp_path_factory.mktemp("faults-delete") / "state", config=config).start(timeout=300)
    yield stack
    stack.stop()


def _agent_log(stack: Stack) -> str:
    """Every agent's event log (the status document keeps only the current agent's recent ones)."""
    return "".join(path.read_text(errors="replace") for path in sorted((stack.state_dir / "logs").glob("agent.log*")))


def test_mlflow_frozen_mid_transaction_leaves_a_hot_journal_and_the_stack_recovers(rollback_journal_stack, tmp_path):
    """The field report: SIGSTOP of MLflow during writes, the agent kills the hung group, and the
    killed writer's hot journal must not keep MLflow down."""
    stack = rollback_journal_stack
    load = Load(stack, tmp_path, CLIENTS, SEED)
    journal = Path(str(stack.state_dir / "mlflow.db") + "-journal")
    injector = Faults(stack, SEED)
    try:
        assert injector.ready_after(0, {}) or stack.wait_ready(300)
        while load.acknowledged() < 20:
            time.sleep(0.2)
        for _ in range(500):  # freeze until one freeze lands inside a write transaction
            pid = stack.pid("mlflow")
            os.kill(pid, signal.SIGSTOP)
            if journal.exists():
                break
            os.kill(pid, signal.SIGCONT)
            time.sleep(random.uniform(0.05, 0.3))
        else:
            pytest.fail("no freeze landed inside a write transaction in 500 tries")
        frozen_at = time.time()
        assert journal.exists()
        recovered = injector.ready_after
        deadline = time.monotonic() + 300
        while not recovered(frozen_at, {"mlflow": pid}):
            assert time.monotonic() < deadline, f"not READY again 300 s after the freeze\n{stack.tail()}"
            time.sleep(0.2)
        acknowledged = load.acknowledged()
        while load.acknowledged() < acknowledged + 20:  # the clients write again
            time.sleep(0.2)
    finally:
        load.stop()
    assert "readonly" not in (stack.state_dir / "logs" / "mlflow.log").read_text()
    result = load.verify()
    assert result["lost"] == [] and result["acknowledged"] > 40


def test_every_fault_is_recovered_and_no_acknowledged_write_is_lost(stack, tmp_path):
    print(f"faults under load: {FAULTS} faults, seed {SEED} (MLPROXY_FAULTS_SEED={SEED} repeats this plan)")
    result = run(stack, tmp_path, FAULTS, CLIENTS, SEED)
    assert result["never_recovered"] == [], f"seed {SEED}\n{stack.tail()}"
    assert {o["kind"] for o in result["outcomes"]} == set(KINDS)
    left = [o for o in result["outcomes"] if o["leftovers"]]
    assert left == [], f"seed {SEED}: processes a fault hit outlived the recovery: {left}"
    assert result["lost"] == [], f"seed {SEED}: acknowledged writes missing: {result['lost'][:10]}"
    assert result["by_kind"]["metric"] > 0 and result["by_kind"]["artifact"] > 0 and result["by_kind"]["param"] > 0
    # The fault during a recovery: a frozen start is found within the liveness budget, not after
    # MLflow's 120 s startup budget.
    assert "mlflow restart: frozen while starting" in _agent_log(stack), "the agent never restarted MLflow frozen while starting"
    slowest = max(o["seconds"] for o in result["outcomes"] if o["kind"] == "freeze-mlflow-while-starting")
    assert slowest < 120, f"a frozen start took {slowest:.0f} s to recover: judged only at the end of its startup budget"
