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
