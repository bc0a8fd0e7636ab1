"""`mlproxy status`: the table a person reads."""

from __future__ import annotations


def test_status_shows_each_distinct_cause_once():
    from mlproxy_supervisor import status
    from mlproxy_supervisor.status_document import ErrorReport, ServiceReport, StatusDocument

    cause = "psycopg.OperationalError: connection to server at db (10.0.0.9), port 5432 failed: Connection refused"
    tail = ["INFO starting", cause, "INFO starting", cause, "INFO starting", cause]
    failed = ErrorReport(message="exited 3 times: " + cause, log_tail=tail)
    document = StatusDocument(overall="down", summary="down: mlflow failed", services={
        "mlflow": ServiceReport(phase="failed", state="FATAL", last_error=failed),
        "jupyter": ServiceReport(phase="failed", state="FATAL", last_error=failed),
    })  # fmt: skip
    table = status.render_table(document)
    assert table.count(cause) == 2, table  # the message once, the log line once
    assert f"    | {cause}  (3 times)" in table and "    | INFO starting  (3 times)" in table, table
    assert status.distinct_lines(["a", "b", "a"]) == ["b", "a  (2 times)"]


def test_status_says_how_long_the_last_start_of_each_server_took():
    from mlproxy_supervisor import status
    from mlproxy_supervisor.status_document import EventEntry, StatusDocument

    def ready(service: str, detail: str) -> EventEntry:
        return EventEntry(at="2026-12-07T00:00:00.000Z", service=service, event="ready", detail=detail)

    events = [
        ready("jupyter", "2.1 s after start (its probe answered in 9 ms)"),
        ready("mlflow", "9.0 s after start (its probe answered in 30 ms)"),
        ready("mlflow", "3.4 s after start (its probe answered in 12 ms)"),  # restarted since
        ready("route", "0.2 s after MLflow and Jupyter were ready (its probe answered in 40 ms)"),
        ready("mlflow", "again, 15 ms"),  # a readiness probe that recovered: not a start
    ]
    document = StatusDocument(overall="ready", summary="ready", events=events)
    assert status.start_timings(document) == (
        "jupyter ready 2.1 s after start; mlflow ready 3.4 s after start; route ready 0.2 s after MLflow and Jupyter were ready"
    )
    assert "Started: jupyter ready 2.1 s after start;" in status.render_table(document)


def test_status_shows_the_watchdogs_view():
    from mlproxy_supervisor import status
    from mlproxy_supervisor.status_document import Replacement, StatusDocument, WatchdogReport

    frozen = Replacement(at="2026-12-07T02:00:00.000Z", process="agent", pid=41, cause="no heartbeat", detail="no heartbeat for 21 s")
    view = WatchdogReport(heartbeat_age_s=0.42, heartbeat_budget_s=21, replaced={"agent": 1}, recent=[frozen])
    table = status.render_table(StatusDocument(overall="ready", summary="ready", watchdog=view))
    assert (
        "Watchdog: agent heartbeat 0.4 s ago (replaced after 21 s); agent replaced 1x "
        "(last at 2026-12-07T02:00:00.000Z: no heartbeat for 21 s); supervisord replaced 0x"
    ) in table, table
    starting = WatchdogReport(heartbeat_budget_s=21)
    assert starting.describe().startswith("no agent heartbeat yet; agent replaced 0x;")
