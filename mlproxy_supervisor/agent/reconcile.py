"""The agent's decisions, as pure functions of what it observed and what it remembers.

``plan_probes`` says which probes are due; ``reconcile`` takes the observation (supervisord's view
plus the probe results) and returns the smallest actions that move the stack towards "every
service ready and the route working". No I/O here: the loop in ``loop.py`` does that, and the
unit tests drive these functions with tables of situations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from ..programs import DEPENDS_ON, LABELS, SINGLE_USER_SERVICES
from ..rpc import ALIVE_STATES, BACKOFF, EXITED, FATAL, STOPPED, STOPPING, ProcessInfo

if TYPE_CHECKING:  # annotations only (see probes.py)
    from ..config import AgentSettings

ROUTE = "route"
STORAGE = "storage"
# Below this much free space where MLflow writes, SQLite's journal and artifact uploads fail soon.
MIN_FREE_BYTES = 32 * 2**20


class Phase(str, Enum):
    WAITING = "waiting"  # not started: a dependency is not ready yet
    STARTING = "starting"  # process alive, not yet ready (startup probe)
    READY = "ready"
    UNREADY = "unready"  # was ready, readiness now failing
    RESTARTING = "restarting"  # being replaced by supervisord or the agent
    FAILED = "failed"  # FATAL or not ready within its startup budget; retried with backoff
    STOPPED = "stopped"  # stopped by the operator: left alone


class Overall(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class ProbeRequest:
    target: str  # a service ("mlflow", "jupyter", "service") or "route"
    kind: str  # "liveness" or "readiness"
    timeout: float
    pid: int = 0  # the process probed (0 for the route): a late answer about an old process is dropped


@dataclass(frozen=True)
class ProbeResult:
    target: str
    kind: str
    ok: bool
    latency: float  # seconds
    at: float  # wall-clock time
    detail: str = ""
    pid: int = 0
    started: float = 0.0  # monotonic time the probe began (0: unknown, count from when it was seen)
    answered: bool = False  # the server sent an HTTP answer (even an error): it is not hung


@dataclass(frozen=True)
class Activity:
    """What /proc shows of a starting service's process group: whether it works at all."""

    pid: int  # the group leader (the service's process)
    cpu_ticks: int  # CPU time used by the whole group, in clock ticks
    frozen: bool  # every member stopped (SIGSTOP, /proc state T)


@dataclass(frozen=True)
class Space:
    """Free space where MLflow writes (the SQLite database's directory, a local artifact store)."""

    what: str  # e.g. "the artifact store"
    path: str
    free_bytes: int


@dataclass(frozen=True)
class Observation:
    now: float  # monotonic seconds, for schedules
    supervisor_state: str | None  # None: supervisord did not answer
    processes: dict[str, ProcessInfo]
    probes: tuple[ProbeResult, ...] = ()
    log_tails: dict[str, str] = field(default_factory=dict)
    wall: float = 0.0
    activity: dict[str, Activity] = field(default_factory=dict)  # starting services only
    space: tuple[Space, ...] = ()


@dataclass(frozen=True)
class Start:
    service: str
    reason: str


@dataclass(frozen=True)
class Restart:
    """Kill the whole process group now and start again (a hang gets no grace period)."""

    service: str
    pid: int
    reason: str


@dataclass(frozen=True)
class Event:
    service: str
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class ServiceMemory:
    phase: Phase = Phase.WAITING
    pid: int = 0  # the process the fields below describe
    started: bool = False  # passed its startup probe; from then on liveness is watched
    seen_since: float = 0.0  # monotonic time this agent first saw the process (adoption counts)
    ready: bool = False
    liveness_failures: int = 0
    readiness_failures: int = 0
    restarts: int = 0
    restart_pending: bool = False  # the agent stopped it to restart it
    operator_stopped: bool = False
    backoff: float = 0.0  # current FATAL retry delay
    retry_at: float | None = None  # monotonic time of the next FATAL retry
    next_liveness: float = 0.0
    next_readiness: float = 0.0
    last_probe: ProbeResult | None = None
    last_error: str = ""
    last_error_at: float = 0.0
    log_tail: str = ""
    # While starting: the last time the process showed signs of work (CPU time or an HTTP answer).
    progress_at: float = 0.0
    progress_ticks: int = -1
    frozen: bool = False


@dataclass(frozen=True)
class RouteMemory:
    ready: bool = False
    failures: int = 0
    next_probe: float = 0.0
    last_probe: ProbeResult | None = None
    last_error: str = ""
    waiting_since: float = 0.0  # monotonic time the services were ready and the route was not yet


@dataclass(frozen=True)
class Memory:
    # The stack's services, in dependency order (Settings.services): MLflow, then its front door.
    services: dict[str, ServiceMemory] = field(default_factory=lambda: {name: ServiceMemory() for name in SINGLE_USER_SERVICES})
    route: RouteMemory = RouteMemory()
    ever_ready: bool = False
    supervisor_available: bool = True
    storage_problems: tuple[str, ...] = ()  # e.g. "the artifact store /data/artifacts: 0 MiB free"
    admitted: int | None = None  # the MLflow process requests may reach (traffic_gate.py)

    @classmethod
    def of(cls, services: tuple[str, ...]) -> Memory:
        """A fresh memory for these services."""
        return cls(services={name: ServiceMemory() for name in services})

    @property
    def overall(self) -> Overall:
        if not self.supervisor_available or any(s.phase is Phase.FAILED for s in self.services.values()):
            return Overall.DOWN
        if self.route.ready and all(s.phase is Phase.READY for s in self.services.values()):
            return Overall.DEGRADED if self.storage_problems else Overall.READY
        return Overall.DEGRADED if self.ever_ready else Overall.STARTING


def _startup_budget(service: str, settings: AgentSettings) -> float:
    """MLflow's budget for MLflow; the front door's (Jupyter, or the Hub service) for the other."""
    return settings.mlflow_startup_budget if service == "mlflow" else settings.jupyter_startup_budget


def liveness_budget(settings: AgentSettings) -> float:
    """How long a hang may last before the agent acts: failure_threshold periods plus a timeout."""
    return settings.liveness.period * settings.liveness.failure_threshold + settings.liveness.timeout


def start_dependencies(service: str, settings: AgentSettings) -> tuple[str, ...]:
    """What must be ready before the agent starts `service`'s process. In parallel mode nothing:
    supervisord starts the front door beside MLflow, and requests wait for MLflow instead
    (traffic_gate.py, `mlflow_admission`)."""
    return DEPENDS_ON[service] if settings.start_order == "ordered" else ()


def mlflow_admission(memory: Memory, processes: dict[str, ProcessInfo], admitted: int | None) -> int | None:
    """The MLflow process requests may reach (traffic_gate.py), None for none: the one that passed
    its startup probe, for as long as it lives and the agent is not replacing it. A process that a
    restarted agent adopts stays admitted while the new agent probes it again."""
    info, mem = processes.get("mlflow"), memory.services["mlflow"]
    if info is None:
        return admitted  # supervisord did not answer: decide nothing
    if info.state not in ALIVE_STATES or info.pid != mem.pid or mem.restart_pending:
        return None
    return info.pid if mem.started or admitted == info.pid else None


def wants_log_tail(memory: Memory, info: ProcessInfo, now: float, settings: AgentSettings) -> bool:
    """Whether the loop should fetch the program's last log lines: only when they explain a failure."""
    mem = memory.services[info.name]
    if info.state in (FATAL, BACKOFF):
        return mem.retry_at is None  # once per failure, not every tick
    stuck = info.state in ALIVE_STATES and not mem.started and info.pid == mem.pid
    return stuck and min(info.now - info.start, now - mem.seen_since) > _startup_budget(info.name, settings)


def plan_probes(memory: Memory, processes: dict[str, ProcessInfo], now: float, settings: AgentSettings) -> list[ProbeRequest]:
    """The probes due now: fast startup polling until started, then liveness and readiness on
    their own periods (readiness fast again while unready, to notice recovery quickly)."""
    requests = []
    startup_timeout = min(settings.readiness.timeout, 2.0)
    for name, mem in memory.services.items():
        info = processes.get(name)
        if info is None or info.state not in ALIVE_STATES or info.pid != mem.pid or mem.restart_pending:
            continue
        if not mem.started:
            if now >= mem.next_readiness:
                requests.append(ProbeRequest(name, "readiness", startup_timeout, info.pid))
            continue
        if now >= mem.next_liveness:
            requests.append(ProbeRequest(name, "liveness", settings.liveness.timeout, info.pid))
        if now >= mem.next_readiness:
            requests.append(ProbeRequest(name, "readiness", settings.readiness.timeout, info.pid))
    if all(mem.ready for mem in memory.services.values()) and now >= memory.route.next_probe:
        timeout = settings.readiness.timeout if memory.route.ready else startup_timeout
        requests.append(ProbeRequest(ROUTE, "readiness", timeout))
    return requests


def reconcile(memory: Memory, seen: Observation, settings: AgentSettings) -> tuple[Memory, list[Start | Restart], list[Event]]:
    """One step: fold the observation into memory and decide the actions."""
    actions: list[Start | Restart] = []
    events: list[Event] = []
    if seen.supervisor_state is None:
        if memory.supervisor_available:
            events.append(Event("supervisord", "unavailable"))
        return replace(memory, supervisor_available=False), actions, events
    if not memory.supervisor_available:
        events.append(Event("supervisord", "available"))
    memory = replace(memory, supervisor_available=True)
    if seen.supervisor_state != "RUNNING":
        return memory, actions, events  # shutting down or restarting: touch nothing

    services = dict(memory.services)
    for name in services:
        info = seen.processes.get(name)
        if info is None:
            continue
        mem = _follow_process(services[name], info, events, name, seen.now)
        mem = _track_progress(mem, name, seen)
        mem = _apply_probes(mem, name, seen, settings, events)
        waits_for = start_dependencies(name, settings)
        mem, action = _decide(mem, name, info, seen, settings, waits_for, all(services[dep].ready for dep in waits_for), events)
        services[name] = mem
        if action is not None:
            actions.append(action)

    route = _apply_route_probe(memory.route, seen, settings, services, events)
    memory = replace(memory, services=services, route=route, storage_problems=_storage(memory, seen, events))
    admitted = mlflow_admission(memory, seen.processes, memory.admitted)
    if admitted != memory.admitted:
        if admitted is None:
            events.append(Event("mlflow", "held", "requests get 503 + Retry-After until MLflow is ready"))
        else:
            events.append(Event("mlflow", "admitted", f"requests go through to MLflow (pid {admitted})"))
        memory = replace(memory, admitted=admitted)
    if memory.overall is Overall.READY and not memory.ever_ready:
        events.append(Event(ROUTE, "stack-ready", "the route works: MLflow answers through its front door"))
        memory = replace(memory, ever_ready=True)
    return memory, actions, events


def _storage(memory: Memory, seen: Observation, events: list[Event]) -> tuple[str, ...]:
    problems = tuple(
        f"{space.what} {space.path}: {space.free_bytes / 2**20:.0f} MiB free (writes fail when it is full)"
        for space in seen.space
        if space.free_bytes < MIN_FREE_BYTES
    )
    if problems != memory.storage_problems:
        events.append(Event(STORAGE, "low" if problems else "ok", "; ".join(problems) or "enough free space again"))
    return problems


def _follow_process(mem: ServiceMemory, info: ProcessInfo, events: list[Event], name: str, now: float) -> ServiceMemory:
    """Reset per-process memory when supervisord reports a different process."""
    alive = info.state in ALIVE_STATES and info.pid > 0
    if alive and info.pid == mem.pid and not mem.seen_since:
        return replace(mem, seen_since=now)  # adopted from a previous agent
    if alive and info.pid != mem.pid:
        if mem.pid:
            mem = replace(mem, restarts=mem.restarts + 1)
        events.append(Event(name, "process", f"pid {info.pid} ({info.state})"))
        return replace(
            mem,
            pid=info.pid,
            started=False,
            seen_since=now,
            ready=False,
            liveness_failures=0,
            readiness_failures=0,
            next_liveness=0.0,
            next_readiness=0.0,
            restart_pending=False,
            operator_stopped=False,
            progress_at=0.0,
            progress_ticks=-1,
            frozen=False,
        )
    if not alive and mem.pid and info.state not in (STOPPING,):
        # It went away; keep the pid until a new one appears, so the new one counts as a restart.
        if mem.started:
            events.append(Event(name, "exited", f"{info.state}, exit status {info.exitstatus}"))
        return replace(mem, started=False, ready=False)
    return mem


def _track_progress(mem: ServiceMemory, name: str, seen: Observation) -> ServiceMemory:
    """Note when a starting process last did any work: CPU time used by its group, or an HTTP
    answer to a probe. Liveness probes cover a started process; before that, this is how a frozen
    or hung start is told from a slow one."""
    activity = seen.activity.get(name)
    if mem.started or activity is None or activity.pid != mem.pid:
        return mem
    answered = any(r.target == name and r.pid == mem.pid and r.answered for r in seen.probes)
    worked = activity.cpu_ticks != mem.progress_ticks and not activity.frozen
    if worked or answered or not mem.progress_at:
        mem = replace(mem, progress_at=seen.now, progress_ticks=activity.cpu_ticks)
    return replace(mem, frozen=activity.frozen)


def _apply_probes(mem: ServiceMemory, name: str, seen: Observation, settings: AgentSettings, events: list[Event]) -> ServiceMemory:
    for result in seen.probes:
        if result.target != name or result.pid != mem.pid:
            continue
        mem = replace(mem, last_probe=result)
        if result.kind == "liveness":
            failures = 0 if result.ok else mem.liveness_failures + 1
            mem = replace(mem, liveness_failures=failures, next_liveness=_next_due(result, seen, settings.liveness.period))
            if not result.ok:
                mem = _with_error(mem, f"liveness probe failed ({failures}/{settings.liveness.failure_threshold}): {result.detail}", seen)
            continue
        if not mem.started:  # the startup probe: poll fast until the first success
            if result.ok:
                # The time a user waited, not the one probe's round trip.
                waited = seen.now - mem.seen_since
                events.append(Event(name, "ready", f"{waited:.1f} s after start (its probe answered in {result.latency * 1000:.0f} ms)"))
                mem = replace(
                    mem,
                    started=True,
                    ready=True,
                    readiness_failures=0,
                    backoff=0.0,
                    next_readiness=seen.now + settings.readiness.period,
                    next_liveness=seen.now + settings.liveness.period,
                )
            else:
                mem = replace(mem, next_readiness=seen.now + settings.startup_period)
            continue
        if result.ok:
            if not mem.ready:
                events.append(Event(name, "ready", f"again, {result.latency * 1000:.0f} ms"))
            mem = replace(mem, ready=True, readiness_failures=0, next_readiness=_next_due(result, seen, settings.readiness.period))
            continue
        failures = mem.readiness_failures + 1
        ready = mem.ready and failures < settings.readiness.failure_threshold
        if mem.ready and not ready:
            events.append(Event(name, "unready", result.detail))
        period = settings.readiness.period if ready else settings.startup_period
        mem = replace(mem, ready=ready, readiness_failures=failures, next_readiness=_next_due(result, seen, period))
        mem = _with_error(mem, f"readiness probe failed ({failures}/{settings.readiness.failure_threshold}): {result.detail}", seen)
    return mem


def _next_due(result: ProbeResult, seen: Observation, period: float) -> float:
    """When the next probe of this kind is due: one period after this one began, as Kubernetes
    counts periodSeconds. Counting from its answer instead would stretch every cycle by the
    probe's duration: with liveness timing out, 3 failures took 3 x (timeout + period) + up to a
    period (10-12 s with the defaults), not the period x failure_threshold + timeout (8 s) the
    configuration promises."""
    return (result.started or seen.now) + period


def _with_error(mem: ServiceMemory, message: str, seen: Observation, tail: str = "") -> ServiceMemory:
    return replace(mem, last_error=message, last_error_at=seen.wall, log_tail=tail or mem.log_tail)


def _decide(
    mem: ServiceMemory,
    name: str,
    info: ProcessInfo,
    seen: Observation,
    settings: AgentSettings,
    waits_for: tuple[str, ...],
    dependencies_ready: bool,
    events: list[Event],
) -> tuple[ServiceMemory, Start | Restart | None]:
    state = info.state
    if state == STOPPED and mem.restart_pending:
        return replace(mem, phase=Phase.RESTARTING), Start(name, "restart")
    if state == STOPPED and info.start > 0:
        if not mem.operator_stopped:
            events.append(Event(name, "stopped-by-operator", "left stopped until started again"))
        return replace(mem, phase=Phase.STOPPED, operator_stopped=True, ready=False), None
    if state in (STOPPED, EXITED):
        if not dependencies_ready:
            return replace(mem, phase=Phase.WAITING), None
        events.append(Event(name, "start", " and ".join(LABELS[dep] for dep in waits_for) + " ready" if waits_for else "depends on nothing"))
        return replace(mem, phase=Phase.STARTING), Start(name, "dependencies ready")
    if state == FATAL:
        return _retry_fatal(mem, name, info, seen, settings, events)
    if state == BACKOFF:
        tail = seen.log_tails.get(name, "")
        return _with_error(replace(mem, phase=Phase.RESTARTING), f"exited during start-up (supervisord retrying): {info.spawnerr or 'see log tail'}", seen, tail), None
    if state == STOPPING:
        return replace(mem, phase=Phase.RESTARTING), None
    if state not in ALIVE_STATES:
        return replace(mem, phase=Phase.RESTARTING), None

    # Alive: starting, ready, unready, or hung.
    mem = replace(mem, retry_at=None)
    if mem.started:
        if mem.liveness_failures >= settings.liveness.failure_threshold:
            reason = f"hung: liveness failed {mem.liveness_failures} times in a row"
            events.append(Event(name, "restart", reason))
            return replace(mem, phase=Phase.RESTARTING, restart_pending=True), Restart(name, info.pid, reason)
        return replace(mem, phase=Phase.READY if mem.ready else Phase.UNREADY), None
    stalled = seen.now - mem.progress_at if mem.progress_at else 0.0
    if stalled > liveness_budget(settings):
        if mem.frozen:
            reason = f"frozen while starting: stopped (/proc state T) for {stalled:.0f} s"
        else:
            reason = f"hung while starting: no CPU time used and no probe answered for {stalled:.0f} s"
        events.append(Event(name, "restart", reason))
        mem = _with_error(mem, reason, seen)
        return replace(mem, phase=Phase.RESTARTING, restart_pending=True), Restart(name, info.pid, reason)
    budget = _startup_budget(name, settings)
    # Counted from the process start, or from when this agent first saw it (an adopted process
    # gets a full budget: a restarted agent must not kill what it has not probed yet).
    if min(info.now - info.start, seen.now - mem.seen_since) > budget:
        reason = f"not ready {budget:.0f} s after start"
        events.append(Event(name, "restart", reason))
        mem = _with_error(mem, reason, seen, seen.log_tails.get(name, ""))
        return replace(mem, phase=Phase.FAILED, restart_pending=True), Restart(name, info.pid, reason)
    return replace(mem, phase=Phase.STARTING), None


def _retry_fatal(
    mem: ServiceMemory, name: str, info: ProcessInfo, seen: Observation, settings: AgentSettings, events: list[Event]
) -> tuple[ServiceMemory, Start | None]:
    """supervisord never retries FATAL; the agent does, with capped exponential backoff."""
    if mem.retry_at is None:
        backoff = min(settings.backoff_max, mem.backoff * 2 if mem.backoff else settings.backoff_initial)
        tail = seen.log_tails.get(name, "")
        cause = last_line(tail) or info.spawnerr or f"exit status {info.exitstatus}"
        events.append(Event(name, "fatal", f"{cause}; retrying in {backoff:.0f} s"))
        mem = _with_error(mem, f"FATAL (gave up after repeated start failures): {cause}", seen, tail)
        return replace(mem, phase=Phase.FAILED, ready=False, backoff=backoff, retry_at=seen.now + backoff), None
    if seen.now >= mem.retry_at:
        events.append(Event(name, "retry", f"after {mem.backoff:.0f} s backoff"))
        return replace(mem, phase=Phase.FAILED, retry_at=None), Start(name, "retry after FATAL")
    return replace(mem, phase=Phase.FAILED), None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _apply_route_probe(
    route: RouteMemory, seen: Observation, settings: AgentSettings, services: dict[str, ServiceMemory], events: list[Event]
) -> RouteMemory:
    if not all(mem.ready for mem in services.values()):
        if route.ready:
            events.append(Event(ROUTE, "down", "a service is not ready"))
        return replace(route, ready=False, failures=0, waiting_since=0.0)
    if not route.ready and not route.waiting_since:
        route = replace(route, waiting_since=seen.now)
    for result in seen.probes:
        if result.target != ROUTE:
            continue
        if result.ok:
            if not route.ready:
                # The time a user waited once both services were ready, not the probe's round trip.
                waited = seen.now - route.waiting_since
                names = " and ".join(LABELS[name] for name in services)
                detail = f"{waited:.1f} s after {names} were ready (its probe answered in {result.latency * 1000:.0f} ms)"
                events.append(Event(ROUTE, "ready", detail))
            route = replace(route, ready=True, failures=0, last_probe=result, next_probe=_next_due(result, seen, settings.readiness.period))
            continue
        failures = route.failures + 1
        still_ready = route.ready and failures < settings.readiness.failure_threshold
        if route.ready and not still_ready:
            events.append(Event(ROUTE, "unready", result.detail))
            route = replace(route, waiting_since=seen.now)
        period = settings.readiness.period if still_ready else settings.startup_period
        route = replace(route, ready=still_ready, failures=failures, last_probe=result, last_error=result.detail, next_probe=_next_due(result, seen, period))
    return route
