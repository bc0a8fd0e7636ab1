"""The status document the agent writes: news worth a write, read back through the same model."""

from __future__ import annotations

from dataclasses import replace

from mlproxy_supervisor.agent import report
from mlproxy_supervisor.agent.reconcile import Memory, Phase, ProbeResult
from mlproxy_supervisor.config import Settings
from mlproxy_supervisor.rpc import ProcessInfo
from mlproxy_supervisor.status_document import StatusDocument


def test_status_news_ignores_the_clock_but_not_a_change(tmp_path):
    settings = Settings(state_dir=tmp_path)

    def document(now: float, latency: float, phase: Phase = Phase.READY, kind: str = "liveness"):
        probe = ProbeResult("mlflow", kind, True, latency, now, "", 1)
        services = {**Memory().services, "mlflow": replace(Memory().services["mlflow"], phase=phase, pid=1, last_probe=probe)}
        processes = {"mlflow": ProcessInfo("mlflow", "RUNNING", 1, 1.0, 0.0, now, 0, "")}
        return report.status_document(replace(Memory(), services=services), processes, settings, report.EventLog(), 7, now)

    # Seconds later only uptimes, timestamps and latencies differ: nothing worth a write at once.
    assert document(100.0, 0.001).news() == document(103.5, 0.004, kind="readiness").news()
    assert document(100.0, 0.001).news() != document(100.0, 0.001, Phase.UNREADY).news()
    written = tmp_path / "status.json"
    document(100.0, 0.001).write(written)
    assert StatusDocument.read(written) == document(100.0, 0.001)  # read back through the same model
    assert written.stat().st_mode & 0o777 == 0o600
