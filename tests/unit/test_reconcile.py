"""The agent's decisions, driven by tables of situations (no processes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mlproxy_supervisor.agent.reconcile import (
    Activity,
    Memory,
    Observation,
    Overall,
    Phase,
    ProbeRequest,
    ProbeResult,
    Restart,
    ServiceMemory,
    Start,
    liveness_budget,
    mlflow_admission,
    plan_probes,
    reconcile,
    wants_log_tail,
)
from mlproxy_supervisor.config import AgentSettings
from mlproxy_supervisor.rpc import ProcessInfo

ORDERED = AgentSettings()  # the default
SETTINGS = AgentSettings(start_order="parallel")  # both servers at once: most decisions are the same
NOW = 1000.0


def proc(name: str, state: str = "RUNNING", pid: int = 0, start: float = 990.0, now: float = NOW) -> ProcessInfo:
    pids = {"mlflow": 101, "jupyter": 202}
    alive = state in ("STARTING", "RUNNING", "STOPPING")
    return ProcessInfo(name, state, pid or (pids[name] if alive else 0), start, 0.0, now, 0, "")


def never_started(name: str) -> ProcessInfo:
    return ProcessInfo(name, "STOPPED", 0, 0.0, 0.0, NOW, 0, "")


def seen(*processes: ProcessInfo, probes=(), tails=None, now=NOW, supervisor="RUNNING", activity=None) -> Observation:
    return Observation(now, supervisor, {p.name: p for p in processes}, tuple(probes), tails or {}, now, activity or {})


def ok(target: str, kind: str = "readiness", pid: int = 0, good: bool = True) -> ProbeResult:
    pids = {"mlflow": 101, "jupyter": 202, "route": 0}
    return ProbeResult(target, kind, good, 0.01, NOW, "" if good else "refused", pid or pids[target])


def ready_memory() -> Memory:
    services = {
        "mlflow": ServiceMemory(phase=Phase.READY, pid=101, started=True, ready=True, seen_since=1.0, next_liveness=NOW + 2, next_readiness=NOW + 2),
        "jupyter": ServiceMemory(phase=Phase.READY, pid=202, started=True, ready=True, seen_since=1.0, next_liveness=NOW + 2, next_readiness=NOW + 2),
    }
    route = replace(Memory().route, ready=True, next_probe=NOW + 2)
    return replace(Memory(), services=services, ever_ready=True, route=route, admitted=101)


def test_an_ordered_start_starts_mlflow_first_and_jupyter_waits():
    memory, actions, _ = reconcile(Memory(), seen(never_started("mlflow"), never_started("jupyter")), ORDERED)
    assert actions == [Start("mlflow", "dependencies ready")]
    assert memory.services["jupyter"].phase is Phase.WAITING
    assert memory.overall is Overall.STARTING


def test_in_an_ordered_start_jupyter_starts_in_the_step_mlflow_becomes_ready():
    memory, _, _ = reconcile(Memory(), seen(proc("mlflow", "STARTING"), never_started("jupyter")), ORDERED)
    assert memory.services["mlflow"].phase is Phase.STARTING
    memory, actions, events = reconcile(memory, seen(proc("mlflow", "STARTING"), never_started("jupyter"), probes=[ok("mlflow")]), ORDERED)
    assert actions == [Start("jupyter", "dependencies ready")]
    assert [(e.service, e.kind, e.detail) for e in events][1] == ("jupyter", "start", "MLflow ready")


def test_a_parallel_start_starts_both_at_once_and_readiness_keeps_its_order():
    memory, actions, _ = reconcile(Memory(), seen(never_started("mlflow"), never_started("jupyter")), SETTINGS)
    assert actions == [Start("mlflow", "dependencies ready"), Start("jupyter", "dependencies ready")]
    # Jupyter ready first: the stack is not, and the route is not probed, until MLflow is too.
    starting = seen(proc("mlflow", "STARTING"), proc("jupyter", "STARTING"))
    memory, _, _ = reconcile(memory, starting, SETTINGS)
    memory, _, events = reconcile(memory, replace(starting, probes=(ok("jupyter"),)), SETTINGS)
    assert [(e.service, e.kind) for e in events] == [("jupyter", "ready")]
    assert memory.overall is Overall.STARTING
    assert all(request.target != "route" for request in plan_probes(memory, starting.processes, NOW, SETTINGS))
    memory, _, _ = reconcile(memory, replace(starting, probes=(ok("mlflow"),)), SETTINGS)
    assert [request.target for request in plan_probes(memory, starting.processes, NOW, SETTINGS)][-1] == "route"


def test_the_ready_event_says_how_long_the_start_took_not_only_the_probe():
    memory, _, _ = reconcile(Memory(), seen(proc("mlflow", "STARTING"), never_started("jupyter")), SETTINGS)
    later = NOW + 9.5
    _, _, events = reconcile(memory, seen(proc("mlflow", "STARTING", now=later), never_started("jupyter"), probes=[ok("mlflow")], now=later), SETTINGS)
    ready = next(e for e in events if e.kind == "ready")
    assert ready.detail == "9.5 s after start (its probe answered in 10 ms)"


def test_in_an_ordered_start_a_failed_startup_probe_starts_nothing_that_depends_on_it():
    memory, _, _ = reconcile(Memory(), seen(proc("mlflow", "STARTING"), never_started("jupyter")), ORDERED)
    memory, actions, _ = reconcile(memory, seen(proc("mlflow", "STARTING"), never_started("jupyter"), probes=[ok("mlflow", good=False)]), ORDERED)
    assert actions == []
    assert not memory.services["mlflow"].started


def test_stack_is_ready_only_once_the_route_works():
    memory = replace(ready_memory(), route=Memory().route, ever_ready=False)
    memory, _, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter")), SETTINGS)
    assert memory.overall is Overall.STARTING
    memory, _, events = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[ok("route")]), SETTINGS)
    assert memory.overall is Overall.READY
    assert ("route", "stack-ready") in [(e.service, e.kind) for e in events]


def test_the_route_ready_event_says_how_long_it_took_after_both_services():
    memory = replace(ready_memory(), route=Memory().route, ever_ready=False)
    memory, _, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter")), SETTINGS)
    later = NOW + 2.5
    _, _, events = reconcile(memory, seen(proc("mlflow", now=later), proc("jupyter", now=later), probes=[ok("route")], now=later), SETTINGS)
    ready = next(e for e in events if (e.service, e.kind) == ("route", "ready"))
    assert ready.detail == "2.5 s after MLflow and Jupyter were ready (its probe answered in 10 ms)"


def test_crash_restarted_by_supervisord_is_followed_and_counted():
    memory = ready_memory()
    memory, actions, _ = reconcile(memory, seen(proc("mlflow", "BACKOFF"), proc("jupyter")), SETTINGS)
    assert actions == []  # supervisord is retrying; nothing to add
    assert memory.overall is Overall.DEGRADED
    assert memory.services["jupyter"].phase is Phase.READY, "a dependency going down never stops Jupyter"
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING", pid=303), proc("jupyter")), SETTINGS)
    assert memory.services["mlflow"].restarts == 1 and memory.services["mlflow"].pid == 303
    assert memory.services["mlflow"].phase is Phase.STARTING


def test_hang_is_restarted_after_threshold_liveness_failures():
    memory = ready_memory()
    for attempt in range(1, SETTINGS.liveness.failure_threshold + 1):
        memory, actions, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[ok("mlflow", "liveness", good=False)]), SETTINGS)
        if attempt < SETTINGS.liveness.failure_threshold:
            assert actions == []
    assert actions == [Restart("mlflow", 101, "hung: liveness failed 3 times in a row")]
    assert memory.services["mlflow"].restart_pending


def test_restart_completes_when_supervisord_reports_the_stop():
    memory = replace(ready_memory(), services={**ready_memory().services, "mlflow": replace(ready_memory().services["mlflow"], restart_pending=True)})
    stopped = ProcessInfo("mlflow", "STOPPED", 0, 990.0, 999.0, NOW, 0, "")
    _, actions, _ = reconcile(memory, seen(stopped, proc("jupyter")), SETTINGS)
    assert actions == [Start("mlflow", "restart")]


def test_liveness_keeps_running_while_readiness_fails():
    memory = ready_memory()
    for _ in range(SETTINGS.readiness.failure_threshold):
        memory, actions, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[ok("mlflow", good=False)]), SETTINGS)
    assert memory.services["mlflow"].phase is Phase.UNREADY and actions == []
    planned = plan_probes(memory, {"mlflow": proc("mlflow"), "jupyter": proc("jupyter")}, NOW + 5, SETTINGS)
    assert ProbeRequest("mlflow", "liveness", SETTINGS.liveness.timeout, 101) in planned


def test_unready_recovers_without_a_restart():
    memory = ready_memory()
    for _ in range(SETTINGS.readiness.failure_threshold):
        memory, _, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[ok("mlflow", good=False)]), SETTINGS)
    memory, actions, events = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[ok("mlflow")]), SETTINGS)
    assert memory.services["mlflow"].phase is Phase.READY and actions == []
    assert ("mlflow", "ready") in [(e.service, e.kind) for e in events]


def test_fatal_is_retried_with_capped_exponential_backoff():
    fatal = ProcessInfo("mlflow", "FATAL", 0, 990.0, 995.0, NOW, 3, "")
    memory = Memory()
    delays = []
    now = NOW
    for _ in range(6):
        memory, actions, _ = reconcile(memory, seen(fatal, never_started("jupyter"), tails={"mlflow": "boom\ncannot connect"}, now=now), ORDERED)
        assert actions == [] and memory.overall is Overall.DOWN
        delay = memory.services["mlflow"].retry_at - now
        delays.append(delay)
        assert "cannot connect" in memory.services["mlflow"].last_error
        memory, actions, _ = reconcile(memory, seen(fatal, never_started("jupyter"), now=now + delay), ORDERED)
        assert actions == [Start("mlflow", "retry after FATAL")]
        now += delay
    assert delays == [2, 4, 8, 16, 32, 60]


def test_backoff_resets_once_the_service_is_ready():
    memory = replace(Memory(), services={**Memory().services, "mlflow": ServiceMemory(backoff=32.0)})
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING"), never_started("jupyter")), SETTINGS)
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING"), never_started("jupyter"), probes=[ok("mlflow")]), SETTINGS)
    assert memory.services["mlflow"].backoff == 0


def test_operator_stop_is_respected_and_shown():
    memory = ready_memory()
    stopped = ProcessInfo("mlflow", "STOPPED", 0, 990.0, 999.0, NOW, 0, "")
    for _ in range(3):
        memory, actions, _ = reconcile(memory, seen(stopped, proc("jupyter")), SETTINGS)
        assert actions == []
    assert memory.services["mlflow"].phase is Phase.STOPPED and memory.services["mlflow"].operator_stopped
    assert memory.overall is Overall.DEGRADED
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING", pid=404), proc("jupyter")), SETTINGS)
    assert not memory.services["mlflow"].operator_stopped


def test_startup_budget_restarts_a_process_that_never_gets_ready():
    memory, _, _ = reconcile(Memory(), seen(proc("mlflow", "RUNNING", start=NOW - 10), never_started("jupyter"), now=NOW - 10), SETTINGS)
    later = NOW - 10 + SETTINGS.mlflow_startup_budget + 1
    memory, actions, _ = reconcile(memory, seen(proc("mlflow", "RUNNING", start=NOW - 10, now=later), never_started("jupyter"), now=later), SETTINGS)
    assert actions and isinstance(actions[0], Restart)
    assert memory.services["mlflow"].phase is Phase.FAILED and memory.overall is Overall.DOWN


def test_adopted_old_process_gets_a_full_startup_budget():
    """A restarted agent must probe before judging: a long-running process is not 'late'."""
    memory = replace(Memory(), services={**Memory().services, "mlflow": ServiceMemory(pid=101)})
    old = proc("mlflow", "RUNNING", start=NOW - 86400)
    memory, actions, _ = reconcile(memory, seen(old, proc("jupyter")), SETTINGS)
    assert actions == []
    assert memory.services["mlflow"].restarts == 0
    memory, actions, _ = reconcile(memory, seen(old, proc("jupyter"), probes=[ok("mlflow")]), SETTINGS)
    assert actions == [] and memory.services["mlflow"].phase is Phase.READY


def test_nothing_is_done_while_supervisord_shuts_down_or_is_unreachable():
    memory = ready_memory()
    _, actions, _ = reconcile(memory, seen(proc("mlflow", "STOPPED"), proc("jupyter", "STOPPED"), supervisor="SHUTDOWN"), SETTINGS)
    assert actions == []
    memory, actions, events = reconcile(memory, seen(supervisor=None), SETTINGS)
    assert actions == [] and memory.overall is Overall.DOWN
    assert [(e.service, e.kind) for e in events] == [("supervisord", "unavailable")]


def test_late_probe_answers_about_an_old_process_are_ignored():
    memory = ready_memory()
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING", pid=505), proc("jupyter")), SETTINGS)
    memory, _, _ = reconcile(memory, seen(proc("mlflow", "STARTING", pid=505), proc("jupyter"), probes=[ok("mlflow", pid=101)]), SETTINGS)
    assert not memory.services["mlflow"].started


@pytest.mark.parametrize(
    ("state", "wanted"),
    [("FATAL", True), ("BACKOFF", True), ("RUNNING", False), ("STOPPED", False)],
)
def test_log_tails_are_fetched_only_to_explain_a_failure(state, wanted):
    info = ProcessInfo("mlflow", state, 101 if state == "RUNNING" else 0, 990.0, 0.0, NOW, 1, "")
    assert wants_log_tail(Memory(), info, NOW, SETTINGS) is wanted


def test_probes_poll_fast_until_started_then_follow_their_periods():
    memory, _, _ = reconcile(Memory(), seen(proc("mlflow", "STARTING"), never_started("jupyter")), SETTINGS)
    processes = {"mlflow": proc("mlflow", "STARTING"), "jupyter": never_started("jupyter")}
    assert [(r.target, r.kind) for r in plan_probes(memory, processes, NOW, SETTINGS)] == [("mlflow", "readiness")]
    memory, _, _ = reconcile(memory, seen(*processes.values(), probes=[ok("mlflow", good=False)]), SETTINGS)
    assert plan_probes(memory, processes, NOW + SETTINGS.startup_period / 2, SETTINGS) == []
    assert plan_probes(memory, processes, NOW + SETTINGS.startup_period, SETTINGS)
    memory = ready_memory()
    both = {"mlflow": proc("mlflow"), "jupyter": proc("jupyter")}
    assert plan_probes(memory, both, NOW + 1, SETTINGS) == []
    due = {(r.target, r.kind) for r in plan_probes(memory, both, NOW + 2, SETTINGS)}
    assert due == {("mlflow", "liveness"), ("mlflow", "readiness"), ("jupyter", "liveness"), ("jupyter", "readiness"), ("route", "readiness")}


def _time_to_restart_a_hang(settings: AgentSettings = SETTINGS, tick: float = 0.05) -> float:
    """Drive plan_probes and reconcile through a hang of MLflow that begins just after a
    successful liveness probe started (the worst case): every MLflow probe waits for its timeout.
    Returns the seconds from the hang to the Restart action."""
    memory = replace(ready_memory(), services={**ready_memory().services, "mlflow": replace(ready_memory().services["mlflow"], next_liveness=NOW + settings.liveness.period)})
    in_flight: dict[tuple[str, str], tuple[ProbeRequest, float]] = {}
    now = NOW
    while now < NOW + 60:
        answered = [(request, began) for request, began in in_flight.values() if now >= began + request.timeout]
        results = [ProbeResult(r.target, r.kind, False, r.timeout, began, "no answer", r.pid, began) for r, began in answered]
        for request, _ in answered:
            del in_flight[(request.target, request.kind)]
        processes = (proc("mlflow", now=now), proc("jupyter", now=now))
        memory, actions, _ = reconcile(memory, seen(*processes, probes=results, now=now), settings)
        if any(isinstance(action, Restart) for action in actions):
            return now - NOW
        for request in plan_probes(memory, {p.name: p for p in processes}, now, settings):
            if request.target == "mlflow":  # the others answer at once and do not matter here
                in_flight.setdefault((request.target, request.kind), (request, now))
        now = round(now + tick, 6)
    raise AssertionError("the hang was never restarted")


def test_a_hang_is_restarted_within_the_liveness_budget():
    # Kubernetes' promise for these settings: failure_threshold probes, one every period,
    # the last one failing after its timeout. The loop's tick may add one tick.
    liveness = SETTINGS.liveness
    budget = liveness.period * liveness.failure_threshold + liveness.timeout
    assert _time_to_restart_a_hang() <= budget + 0.05


def test_probe_periods_count_from_the_probe_start_not_its_answer():
    memory = ready_memory()
    began = NOW - SETTINGS.liveness.timeout  # a probe that waited for its whole timeout
    failed = ProbeResult("mlflow", "liveness", False, SETTINGS.liveness.timeout, began, "no answer", 101, began)
    memory, _, _ = reconcile(memory, seen(proc("mlflow"), proc("jupyter"), probes=[failed]), SETTINGS)
    assert memory.services["mlflow"].next_liveness == began + SETTINGS.liveness.period


def _start_mlflow(ticks_at, frozen_at=lambda t: False, answered_at=lambda t: False, until: float = 60.0, tick: float = 0.5):
    """Drive reconcile through a starting MLflow whose /proc shows ticks_at(t) CPU ticks t seconds
    after it began, never passing its startup probe. Returns (seconds to the Restart or None, its reason)."""
    memory, _, _ = reconcile(Memory(), seen(never_started("mlflow"), never_started("jupyter")), SETTINGS)
    t = 0.0
    while t <= until:
        now = NOW + t
        info = proc("mlflow", "STARTING" if t < 1 else "RUNNING", start=NOW, now=now)
        probe = ProbeResult("mlflow", "readiness", False, 0.01, now, "HTTP 503" if answered_at(t) else "refused", 101, now, answered_at(t))
        activity = {"mlflow": Activity(101, ticks_at(t), frozen_at(t))}
        memory, actions, _ = reconcile(memory, seen(info, never_started("jupyter"), probes=[probe], now=now, activity=activity), SETTINGS)
        restarts = [a for a in actions if isinstance(a, Restart)]
        if restarts:
            return t, restarts[0].reason
        t += tick
    return None, ""


def test_a_start_frozen_by_sigstop_is_restarted_within_the_liveness_budget():
    frozen_from = 5.0
    at, reason = _start_mlflow(lambda t: int(min(t, frozen_from) * 50), frozen_at=lambda t: t >= frozen_from)
    assert at is not None and at - frozen_from <= liveness_budget(SETTINGS) + 0.5
    assert "frozen while starting" in reason and "state T" in reason


def test_a_start_that_uses_no_cpu_and_answers_nothing_is_restarted_as_hung():
    at, reason = _start_mlflow(lambda t: int(min(t, 3.0) * 50))
    assert at is not None and at - 3.0 <= liveness_budget(SETTINGS) + 0.5
    assert "hung while starting" in reason


@pytest.mark.parametrize(
    "case",
    [
        dict(ticks_at=lambda t: int(t * 50)),  # busy importing: a slow start, not a hang
        dict(ticks_at=lambda t: 7, answered_at=lambda t: True),  # idle, but answering (HTTP 503)
    ],
)
def test_a_slow_start_that_makes_progress_gets_its_whole_startup_budget(case):
    at, _ = _start_mlflow(**case, until=SETTINGS.mlflow_startup_budget - 1)
    assert at is None


def test_low_disk_space_degrades_a_ready_stack_with_the_reason_and_recovers():
    from mlproxy_supervisor.agent.reconcile import MIN_FREE_BYTES, Space
    from mlproxy_supervisor.agent.report import status_line

    both = (proc("mlflow"), proc("jupyter"))
    full = Observation(NOW, "RUNNING", {p.name: p for p in both}, (), {}, NOW, {}, (Space("the artifact store", "/data/a", 1024),))
    memory, actions, events = reconcile(ready_memory(), full, SETTINGS)
    assert actions == [] and memory.overall is Overall.DEGRADED
    assert "disk nearly full: the artifact store /data/a: 0 MiB free" in status_line(memory)
    assert [(e.service, e.kind) for e in events] == [("storage", "low")]
    roomy = replace(full, space=(Space("the artifact store", "/data/a", MIN_FREE_BYTES * 4),))
    memory, _, events = reconcile(memory, roomy, SETTINGS)
    assert memory.overall is Overall.READY and [(e.service, e.kind) for e in events] == [("storage", "ok")]


# --- the order of traffic (traffic_gate.py): who may send MLflow requests ---------------------


def test_mlflow_gets_requests_from_its_startup_probe_until_its_process_goes():
    starting = seen(proc("mlflow", "STARTING"), proc("jupyter", "STARTING"))
    memory, _, _ = reconcile(Memory(), starting, SETTINGS)
    assert mlflow_admission(memory, starting.processes, None) is None, "alive is not ready"
    memory, _, _ = reconcile(memory, replace(starting, probes=(ok("mlflow"),)), SETTINGS)
    assert mlflow_admission(memory, starting.processes, None) == 101
    exited = seen(proc("mlflow", "EXITED"), proc("jupyter"))
    memory, _, _ = reconcile(memory, exited, SETTINGS)
    assert mlflow_admission(memory, exited.processes, 101) is None
    again = seen(proc("mlflow", "STARTING", pid=303), proc("jupyter"))
    memory, _, _ = reconcile(memory, again, SETTINGS)
    assert mlflow_admission(memory, again.processes, None) is None, "a new process waits for its own probe"


def test_a_hung_mlflow_is_closed_to_requests_in_the_step_the_agent_decides_to_replace_it():
    memory = ready_memory()
    hanging = seen(proc("mlflow"), proc("jupyter"), probes=[ok("mlflow", "liveness", good=False)])
    for _ in range(SETTINGS.liveness.failure_threshold - 1):
        memory, _, _ = reconcile(memory, hanging, SETTINGS)
        assert mlflow_admission(memory, hanging.processes, 101) == 101, "a missed probe or two is not a hang"
    memory, actions, _ = reconcile(memory, hanging, SETTINGS)
    assert actions == [Restart("mlflow", 101, "hung: liveness failed 3 times in a row")]
    assert mlflow_admission(memory, hanging.processes, 101) is None


def test_an_adopted_mlflow_keeps_its_requests_while_a_new_agent_probes_it_again():
    adopted = replace(Memory(), services={**Memory().services, "mlflow": ServiceMemory(pid=101)})
    running = seen(proc("mlflow"), proc("jupyter"))
    memory, _, _ = reconcile(adopted, running, SETTINGS)
    assert not memory.services["mlflow"].started
    assert mlflow_admission(memory, running.processes, 101) == 101
    assert mlflow_admission(memory, running.processes, None) is None, "not opened by the old agent: wait for the probe"
    assert mlflow_admission(memory, running.processes, 999) is None, "opened for another process"


def test_a_silent_supervisord_leaves_the_requests_as_they_were():
    memory = ready_memory()
    assert mlflow_admission(memory, {}, 101) == 101
    assert mlflow_admission(memory, {}, None) is None
