"""Faults under load: client processes log through /mlflow/ while processes of the stack are killed
or frozen at random; after each fault the stack must be READY again with nothing left of the
processes the fault hit, and at the end every write the server acknowledged must be stored. Used
by tests/faults (short) and benchmarks (long).

Frozen means frozen until replaced (SIGSTOP, never SIGCONT): in the field a deadlock or a syscall
stuck on a dead mount does not resume. The compound kinds freeze the agent first, so that the
second fault is found only once `mlproxy up` has replaced the agent (watchdog.py).
"""

from __future__ import annotations

import calendar
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlproxy_supervisor import procfs
from mlproxy_supervisor.status_document import StatusDocument
from tests.stack import ROOT, Stack

KINDS = (
    "kill-mlflow", "kill-jupyter", "kill-agent",
    "freeze-mlflow", "freeze-jupyter", "freeze-agent",
    "freeze-mlflow-while-starting",  # a fault during a recovery: MLflow killed, its successor frozen
    "power-cut",
    # Who watches the agent: each is found by `mlproxy up`, not by the agent.
    "freeze-agent-then-freeze-mlflow", "freeze-agent-then-kill-jupyter", "freeze-agent-twice",
    "freeze-supervisord",
)
RECOVERY_TIMEOUT = 300.0  # seconds; a loaded 2-core machine, MLflow possibly in supervisord's backoff


@dataclass
class Outcome:
    kind: str
    recovered: bool
    seconds: float  # from the fault to READY again (or to giving up)
    detail: str = ""
    leftovers: tuple[int, ...] = ()  # processes the fault hit that still run after the recovery


def _status(stack: Stack) -> StatusDocument | None:
    return StatusDocument.read(stack.configured.status_file)


def _ready(stack: Stack) -> bool:
    status = _status(stack)
    return status is not None and status.overall == "ready"


def _service_pid(stack: Stack, name: str) -> int:
    status = _status(stack)
    if status is None:
        return 0
    if name == "agent":
        return status.agent_pid or 0
    if name == "supervisord":
        return (status.supervisord.pid if status.supervisord else None) or 0
    return status.services[name].pid if name in status.services else 0


def _updated(status: StatusDocument) -> float:
    text = status.updated
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + text[19:-1]) if text else 0.0


def _wait(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _descendants(root: int) -> list[int]:
    parents = {pid: info.ppid for pid in procfs.pids() if (info := procfs.stat(pid)) is not None}
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return found


def gone(pid: int) -> bool:
    """No such process any more (a zombie not reaped yet counts: it runs nothing)."""
    info = procfs.stat(pid)
    return info is None or info.state == "Z"


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class Faults:
    """Injects faults of KINDS into a running Stack and times each recovery."""

    def __init__(self, stack: Stack, seed: int):
        self.stack, self.rng = stack, random.Random(seed)
        self.outcomes: list[Outcome] = []

    def plan(self, count: int) -> list[str]:
        """Every kind at least once, then random kinds, in random order."""
        kinds = list(KINDS) + [self.rng.choice(KINDS) for _ in range(max(0, count - len(KINDS)))]
        self.rng.shuffle(kinds)
        return kinds

    def ready_after(self, since: float, changed: dict[str, int]) -> bool:
        """READY in a status document written after `since`, with each service in `changed`
        running as a process other than the one the fault hit."""
        status = _status(self.stack)
        if status is None or status.overall != "ready" or _updated(status) <= since:
            return False
        return all(_service_pid(self.stack, name) not in (0, pid) for name, pid in changed.items())

    def inject(self, kind: str) -> Outcome:
        stack = self.stack
        assert _wait(lambda: _ready(stack), RECOVERY_TIMEOUT), "not ready before a fault"
        started = time.time()
        changed: dict[str, int] = {}
        doomed: list[int] = []  # processes that must be gone once the stack has recovered
        detail = ""
        action, _, target = kind.partition("-")
        if kind == "power-cut":
            changed["supervisord"] = _service_pid(stack, "supervisord")
            self.power_cut()
        elif kind == "freeze-mlflow-while-starting":
            old = stack.pid("mlflow")
            os.kill(old, signal.SIGKILL)
            if _wait(lambda: stack.supervisor.processes()["mlflow"].pid not in (0, old), 60, 0.02):
                successor = stack.supervisor.processes()["mlflow"].pid
                os.kill(successor, signal.SIGSTOP)
                changed["mlflow"] = successor
                detail = f"froze pid {successor} while starting"
            else:
                changed["mlflow"] = old
        elif kind == "freeze-supervisord":
            changed["supervisord"] = stack.supervisor.pid()
            doomed += [stack.pid(name) for name in ("agent", "mlflow", "jupyter")]
            os.kill(changed["supervisord"], signal.SIGSTOP)
        elif kind.startswith("freeze-agent-"):
            detail = self.compound(kind, changed, doomed)
        else:
            pid = stack.pid(target)
            os.kill(pid, signal.SIGKILL if action == "kill" else signal.SIGSTOP)
            changed[target] = pid
            if target == "mlflow" and action == "freeze":
                journal = Path(str(stack.state_dir / "mlflow.db") + "-journal")
                detail = "journal pending" if journal.exists() else ""
        recovered = _wait(lambda: self.ready_after(started, changed), RECOVERY_TIMEOUT, 0.1)
        seconds = time.time() - started
        doomed += changed.values()
        _wait(lambda: all(gone(pid) for pid in doomed), 10)  # a reap may lag the new status document
        outcome = Outcome(kind, recovered, seconds, detail, tuple(pid for pid in doomed if not gone(pid)))
        self.outcomes.append(outcome)
        return outcome

    def compound(self, kind: str, changed: dict[str, int], doomed: list[int]) -> str:
        """The agent frozen, then a second fault that only a live agent would find."""
        stack = self.stack
        agent = changed["agent"] = stack.pid("agent")
        os.kill(agent, signal.SIGSTOP)
        if kind == "freeze-agent-twice":  # its successor frozen as soon as it runs
            if not _wait(lambda: stack.pid("agent") not in (0, agent), RECOVERY_TIMEOUT, 0.05):
                return "the first frozen agent was never replaced"
            changed["agent"] = stack.pid("agent")
            os.kill(changed["agent"], signal.SIGSTOP)
            doomed.append(agent)
            return f"froze agents {agent} and {changed['agent']}"
        action, _, target = kind.removeprefix("freeze-agent-then-").partition("-")
        changed[target] = stack.pid(target)
        os.kill(changed[target], signal.SIGKILL if action == "kill" else signal.SIGSTOP)
        return ""

    def power_cut(self) -> None:
        """SIGKILL of the whole tree at once (`mlproxy up`, supervisord and everything under it),
        frozen first so nothing reacts to the others' deaths; then `mlproxy up` again."""
        stack = self.stack
        tree = _descendants(stack.process.pid)
        _signal(tree, signal.SIGSTOP)
        _signal(tree, signal.SIGKILL)
        stack.process.wait(60)
        stack._log.close()
        stack.start(wait=False)

    def summary(self) -> dict:
        by_kind: dict[str, list[float]] = {}
        for outcome in self.outcomes:
            if outcome.recovered:
                by_kind.setdefault(outcome.kind, []).append(outcome.seconds)
        return {
            "faults": len(self.outcomes),
            "never_recovered": [asdict(o) for o in self.outcomes if not o.recovered],
            "recovery_seconds": by_kind,
            "outcomes": [asdict(o) for o in self.outcomes],
        }


class Load:
    """CLIENTS processes of tests/support/load.py writing through the stack's route."""

    def __init__(self, stack: Stack, directory: Path, clients: int, seed: int, tracking: tuple[str, str] | None = None):
        """tracking: (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN) for the clients; by default the
        stack's /mlflow/ route with Jupyter's token."""
        self.stack, self.directory = stack, directory
        self.tracking = tracking or (f"{stack.base}/mlflow", stack.token)
        self.stop_file = directory / "stop"
        self.ledgers = [directory / f"client-{i}.jsonl" for i in range(clients)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.load", "write", str(ledger), str(self.stop_file), str(seed * 100 + i)],
                env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(directory / f"client-{i}.err", "w"),  # noqa: SIM115
            )
            for i, ledger in enumerate(self.ledgers)
        ]

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPROXY_"))}
        env.update(MLFLOW_TRACKING_URI=self.tracking[0], MLFLOW_TRACKING_TOKEN=self.tracking[1])
        return env

    def acknowledged(self) -> int:
        return sum(len(ledger.read_text().splitlines()) for ledger in self.ledgers if ledger.exists())

    def stop(self) -> list[int]:
        self.stop_file.touch()
        return [process.wait(120) for process in self.processes]

    def verify(self) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "tests.support.load", "verify", *map(str, self.ledgers)],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])


def run(stack: Stack, directory: Path, faults: int, clients: int, seed: int, log=print) -> dict:
    """The whole exercise: load, `faults` faults each followed by READY, then the check."""
    load = Load(stack, directory, clients, seed)
    injector = Faults(stack, seed)
    try:
        _wait(lambda: load.acknowledged() >= clients * 5, 300)
        for number, kind in enumerate(injector.plan(faults), 1):
            before = load.acknowledged()
            outcome = injector.inject(kind)
            log(f"fault {number}/{faults} {kind}: {'READY' if outcome.recovered else 'NOT RECOVERED'} after "
                f"{outcome.seconds:.1f} s {outcome.detail} (acknowledged so far {before})")
            if not outcome.recovered:
                break
            _wait(lambda b=before: load.acknowledged() > b, 120)  # the clients write again
    finally:
        load.stop()
    return {**injector.summary(), **load.verify(), "clients": clients, "seed": seed}
