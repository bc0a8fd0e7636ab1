"""The agent's one loop: observe, probe, reconcile, act, report. All the I/O lives here.

Safe to restart at any moment: a new agent reads supervisord's view, adopts what runs (restarting
nothing that is healthy) and carries on its predecessor's counters from the status document.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace

from .. import credentials, procfs, traffic_gate, watchdog
from ..config import Settings
from ..programs import AGENT_USER
from ..rpc import ALIVE_STATES, STOPPED, Supervisor, SupervisorUnavailable
from ..status_document import StatusDocument
from ..timings import IDLE_TICK, KILL_WAIT
from . import metrics, reconcile, report
from .notify import Notifier
from .probes import Prober, free_space, process_activity, store_locations
from .reconcile import Memory, Observation, Overall, Restart, Start

STATUS_REFRESH = 2.0  # rewrite the status document at least this often (freshness for readers)


def log(message: str) -> None:
    print(message, flush=True)


def agent_headers(settings: Settings) -> dict[str, str]:
    """Team mode: how the agent's probes name it (an admin of the stack) to MLflow's auth app."""
    from ..hub import caller

    return caller.headers(AGENT_USER, True, credentials.read_token(settings.mlflow_auth_secret))


def kill_group(pgid: int) -> None:
    """SIGKILL a program's whole process group (supervisord makes each program a group leader)."""
    if pgid <= 1 or not procfs.group_members(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def restore_memory(settings: Settings, supervisor_pid: int | None) -> Memory:
    """Carry counters over from the previous agent of the same supervisord, if any."""
    previous = StatusDocument.read(settings.status_file)
    # The gate as the previous agent left it: its MLflow keeps its requests while we probe it again.
    memory = replace(Memory.of(settings.services), admitted=traffic_gate.admitted_pid(settings.traffic_gate_file))
    if previous is None or supervisor_pid is None or previous.supervisord is None or previous.supervisord.pid != supervisor_pid:
        return memory
    services = dict(memory.services)
    for name, old in previous.services.items():
        if name in services:
            services[name] = replace(
                services[name],
                pid=old.pid,
                restarts=old.restarts,
                operator_stopped=old.stopped_by_operator,
                restart_pending=old.restart_pending,
            )
    return replace(memory, services=services, ever_ready=previous.overall in ("ready", "degraded"))


class Agent:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.supervisor = Supervisor(settings.socket_path)
        # The authenticated probes log in as a user would: with Jupyter's token, or in team mode
        # with the service's own Hub token.
        token_file = settings.team.service_token_file if settings.team_mode else settings.jupyter.token_file
        self.prober = Prober(settings, lambda: credentials.read_token(token_file), lambda: agent_headers(settings))
        self.store_locations = store_locations(settings)
        self.notifier = Notifier()
        self.events = report.EventLog()
        self.metrics = self._start_metrics()
        self.stopping = False
        self.ready_notified = False
        self.supervisor_pid: int | None = None
        self.last_document: dict | None = None
        self.last_write = 0.0
        self.last_summary: str | None = None

    def _start_metrics(self) -> metrics.MetricsServer | None:
        port = self.settings.agent.metrics_port
        if not port:
            return None
        try:
            return metrics.MetricsServer(port, self.settings)
        except OSError as error:
            log(f"metrics: cannot listen on 127.0.0.1:{port} ({error.strerror}); set agent.metrics_port")
            return None

    def observe(self) -> tuple[str | None, dict]:
        """supervisord's state and processes, in one call per step: once it is shutting down or
        restarting, supervisord answers every call with SHUTDOWN_STATE (which the client turns
        into SupervisorUnavailable), so any answer means RUNNING and getState adds nothing."""
        try:
            processes = self.supervisor.processes()
            if self.supervisor_pid is None:
                self.supervisor_pid = self.supervisor.pid()
            return "RUNNING", processes
        except SupervisorUnavailable:
            return None, {}

    def execute(self, action: Start | Restart) -> None:
        try:
            if isinstance(action, Start):
                self.supervisor.start(action.service)
                return
            # Restart: tell supervisord the exit is intended, then kill without grace (a hung
            # process would sit out stopwaitsecs), wait for the reap, start again.
            self.supervisor.stop(action.service)
            kill_group(action.pid)
            deadline = time.monotonic() + KILL_WAIT
            while time.monotonic() < deadline:
                if self.supervisor.processes()[action.service].state not in ALIVE_STATES:
                    break
                time.sleep(0.05)
            if self.supervisor.processes()[action.service].state == STOPPED:
                self.supervisor.start(action.service)
        except SupervisorUnavailable as error:
            log(f"{action.service}: could not {type(action).__name__.lower()}: {error}")
        except Exception as error:  # an XML-RPC fault: report it, retry on a later step
            log(f"{action.service}: {type(action).__name__.lower()} failed: {error}")

    def report(self, memory: Memory, processes: dict, now: float) -> None:
        document = report.status_document(memory, processes, self.settings, self.events, self.supervisor_pid, time.time())
        comparable = document.news()
        if comparable != self.last_document or now - self.last_write >= STATUS_REFRESH:
            document.write(self.settings.status_file)
            self.last_document, self.last_write = comparable, now
        if self.metrics is not None:
            self.metrics.latest = (memory, processes)
        summary = report.status_line(memory)
        if summary != self.last_summary:  # the same line as systemd's StatusText, in the log/journal
            log(f"status: {summary}")
            self.last_summary = summary
        if memory.overall is Overall.READY and not self.ready_notified:
            self.notifier.ready(summary)
            self.ready_notified = True
        else:
            self.notifier.status(summary)

    def step(self, memory: Memory, previous_pids: dict[str, int]) -> tuple[Memory, dict[str, int], bool]:
        """One pass: observe, take finished probe results, reconcile, act, start due probes,
        report. Returns the new memory, the pids seen, and whether anything is starting."""
        state, processes = self.observe()
        self.beat()
        now = time.monotonic()
        tails = {
            name: self.supervisor.tail(name)
            for name, info in processes.items()
            if name in memory.services and reconcile.wants_log_tail(memory, info, now, self.settings.agent)
        }
        activity = {  # /proc, for services still starting: is a slow start frozen or hung?
            name: found
            for name, info in processes.items()
            if name in memory.services and info.state in ALIVE_STATES and info.pid > 0 and not (memory.services[name].started and memory.services[name].pid == info.pid)
            and (found := process_activity(info.pid)) is not None
        }
        space = free_space(self.store_locations)
        seen = Observation(now, state, processes, self.prober.collect(), tails, time.time(), activity, space)
        memory, actions, events = reconcile.reconcile(memory, seen, self.settings.agent)
        for event in events:
            log(self.events.record(event, seen.wall))
        self._gate(memory.admitted)  # before acting: a hung MLflow gets no more requests before it is killed
        self.beat()  # after the log tails, before a restart: each is a phase
        for action in actions:
            self.execute(action)
            self.beat()
        self._reap_leftovers(previous_pids, processes)
        if processes:
            previous_pids = {name: processes[name].pid for name in memory.services if name in processes}
        if state == "RUNNING" and not actions:  # after an action, look at supervisord first
            self.prober.submit(reconcile.plan_probes(memory, processes, time.monotonic(), self.settings.agent))
        self.report(memory, processes, now)
        busy = any(not mem.ready for mem in memory.services.values()) or not memory.route.ready
        return memory, previous_pids, busy

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.observe()
        memory = restore_memory(self.settings, self.supervisor_pid)
        log(f"agent started (pid {os.getpid()}), supervisord {'pid ' + str(self.supervisor_pid) if self.supervisor_pid else 'not answering'}")
        previous_pids = {name: mem.pid for name, mem in memory.services.items()}
        while not self.stopping:
            self.beat()
            try:
                memory, previous_pids, busy = self.step(memory, previous_pids)
            except Exception as error:  # a bug or a surprise must not take the agent down in a loop
                log(f"agent step failed: {type(error).__name__}: {error}")
                busy = False
            self.prober.wait(self.settings.agent.startup_period if busy else IDLE_TICK, wake_on_success=busy)
        log("agent stopping")
        if self.metrics is not None:
            self.metrics.close()
        return 0

    def beat(self) -> None:
        """Between the phases of a step: `up` replaces an agent whose heartbeat stops (watchdog.py),
        so no phase may take longer than AGENT_PHASE_BOUND."""
        watchdog.beat(self.settings.heartbeat_file)

    def _gate(self, admitted: int | None) -> None:
        path = self.settings.traffic_gate_file
        if admitted == traffic_gate.admitted_pid(path):
            return
        if admitted is None:
            traffic_gate.close(path)
        else:
            traffic_gate.open_for(path, admitted)

    def _reap_leftovers(self, previous: dict[str, int], processes: dict) -> None:
        """Kill what is left of a program's old process group (e.g. `mlflow server`'s uvicorn
        child after a kill -9 of its parent), so it cannot hold the port against the new one."""
        for name, old_pid in previous.items():
            info = processes.get(name)  # None when supervisord did not answer: decide nothing
            if old_pid and info is not None and info.pid != old_pid and procfs.group_members(old_pid):
                log(f"{name}: killing leftovers of process group {old_pid}")
                kill_group(old_pid)

    def _stop(self, signum, frame) -> None:
        self.stopping = True


def main(settings: Settings) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    return Agent(settings).run()
