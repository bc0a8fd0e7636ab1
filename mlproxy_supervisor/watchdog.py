"""Who watches the watchers: `mlproxy up` replaces a frozen agent and a frozen supervisord.

The agent finds a hung MLflow or Jupyter and supervisord restarts an agent that exits. A *frozen*
process exits never (a deadlock, a syscall stuck on a dead mount, SIGSTOP): supervisord sees
nothing wrong with a frozen agent, and nothing at all once it is frozen itself. The chain is:
systemd (or the terminal, or tini in the container) runs `up`, `up` watches supervisord and the
agent, the agent watches MLflow and Jupyter.

Why `up`, and not an eventlistener on supervisord's TICK_5 events: an eventlistener is
supervisord's child and gets its ticks from supervisord's own loop, so a frozen supervisord
silences it too, and it could not start its own parent again. `up` is already supervisord's
parent in every mode (in a terminal, as the unit's ExecStart, as the container's command under
tini): one watcher and one code path for all three. It holds supervisord's process handle and
the prepared configuration, and does nothing else that could freeze with the stack. Under
systemd, `up` sends WATCHDOG=1 once per loop, so WatchdogSec watches `up`.

- The agent touches its heartbeat file between the phases of its loop (agent/loop.py). When it
  has not changed for `heartbeat_budget` (a live agent's longest phase, plus margin), `up`
  SIGKILLs the agent's process group; supervisord starts a new agent, which adopts what runs.
  The watcher never touches MLflow or Jupyter.
- When supervisord's socket has not answered for SUPERVISORD_SILENCE, `up` SIGKILLs it, ends what
  it leaves (its programs, now `up`'s children) and starts it again on the same configuration.
- Each replacement is recorded with its cause in the watchdog file: `mlproxy status` and the
  metrics show it, with the heartbeat's age.

Changes of the heartbeat are timed on `up`'s monotonic clock, so a wall-clock jump never makes
a live agent look frozen.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .config import Settings
from .files import write_atomically
from .rpc import ALIVE_STATES, Supervisor, SupervisorUnavailable
from .status_document import Replacement, WatchdogReport, iso
from .timings import AGENT_PHASE_BOUND, HEARTBEAT_MARGIN, IDLE_TICK, RPC_TIMEOUT, SUPERVISORD_SILENCE

KEPT = 20  # replacements listed in the watchdog file (the counts cover all of them)
# Why the watcher replaces each process (the metrics' `cause` label).
CAUSES = {"agent": "no heartbeat", "supervisord": "socket unanswered"}


def heartbeat_budget(settings: Settings) -> float:
    """How long a live agent may go without touching its heartbeat."""
    return AGENT_PHASE_BOUND + max(IDLE_TICK, settings.agent.startup_period) + HEARTBEAT_MARGIN


def beat(path: Path) -> None:
    """The agent's heartbeat: one utime, or the file made on the first beat."""
    try:
        os.utime(path)
    except FileNotFoundError:
        try:
            path.touch(mode=0o600)
        except OSError:
            pass  # the runtime directory gone (the stack stopping): nothing to tell
    except OSError:
        pass


def report(settings: Settings) -> WatchdogReport | None:
    """The watcher's view with the heartbeat's age now; None when no `up` watches this stack."""
    try:
        recorded = WatchdogReport.model_validate_json(settings.watchdog_file.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        heartbeat = time.time() - settings.heartbeat_file.stat().st_mtime
    except OSError:
        heartbeat = None
    return recorded.model_copy(update={"heartbeat_age_s": heartbeat})


class Watcher:
    """`up`'s side: looks at supervisord and the agent's heartbeat once per WATCH_PERIOD, replaces
    the agent itself, and tells `up` when supervisord needs replacing (`up` owns that process)."""

    def __init__(self, settings: Settings, say):
        self.settings = settings
        self.say = say
        self.budget = heartbeat_budget(settings)
        self.report = WatchdogReport(heartbeat_budget_s=self.budget)
        self.reset()
        self._write()

    def reset(self) -> None:
        """A supervisord that has just answered for the first time: judge it, and its agent, from now on."""
        now = time.monotonic()
        self.answered = now
        self.heartbeat_seen: tuple[int, float] = (self._heartbeat_mtime(), now)

    def supervisord_silence(self) -> float | None:
        """Seconds supervisord has not replied, once that is SUPERVISORD_SILENCE or more. A stop or
        reload under way replies (with a fault): never taken for a freeze."""
        if Supervisor(self.settings.socket_path, RPC_TIMEOUT).replies():
            self.answered = time.monotonic()
            return None
        silence = time.monotonic() - self.answered
        return silence if silence >= SUPERVISORD_SILENCE else None

    def check_agent(self) -> None:
        """Replace the agent when its heartbeat has not changed for the budget."""
        now = time.monotonic()
        mtime = self._heartbeat_mtime()
        if mtime != self.heartbeat_seen[0]:
            self.heartbeat_seen = (mtime, now)
            return
        silent = now - self.heartbeat_seen[1]
        if silent < self.budget:
            return
        try:
            agent = Supervisor(self.settings.socket_path, RPC_TIMEOUT).processes().get("agent")
        except SupervisorUnavailable:
            return  # supervisord's own silence is judged separately (or it is stopping)
        if agent is None or agent.state not in ALIVE_STATES or agent.pid <= 1:
            return  # not running (an operator stopped it, supervisord backs off)
        # An agent started since (supervisord restarted it, an operator started it again) has its
        # whole budget from its own start, before its first beat.
        silent = min(silent, agent.now - agent.start)
        if silent < self.budget:
            return
        detail = f"{CAUSES['agent']} for {silent:.0f} s"
        self.say(f"the health agent (pid {agent.pid}) is frozen: {detail}; replacing it")
        try:
            os.killpg(agent.pid, signal.SIGKILL)  # supervisord makes each program a group leader
        except ProcessLookupError:
            pass
        self.heartbeat_seen = (mtime, now)  # its successor gets a whole budget to beat
        self.record("agent", agent.pid, detail)

    def record(self, process: str, pid: int, detail: str) -> None:
        report = self.report
        replaced = {**report.replaced, process: report.replaced.get(process, 0) + 1}
        recent = [*report.recent, Replacement(at=iso(time.time()), process=process, pid=pid, cause=CAUSES[process], detail=detail)][-KEPT:]
        self.report = report.model_copy(update={"replaced": replaced, "recent": recent})
        self._write()

    def _write(self) -> None:
        try:
            write_atomically(self.settings.watchdog_file, self.report.model_dump_json(exclude={"heartbeat_age_s"}) + "\n")
        except OSError:
            pass  # the runtime directory gone: the stack is stopping

    def _heartbeat_mtime(self) -> int:
        try:
            return self.settings.heartbeat_file.stat().st_mtime_ns
        except OSError:
            return 0


def forget(settings: Settings) -> None:
    """A stopped stack has no watcher to report."""
    for path in (settings.watchdog_file, settings.heartbeat_file):
        path.unlink(missing_ok=True)

