"""The agent's Prometheus metrics, parsed by prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mlproxy_supervisor.agent.reconcile import Memory
from mlproxy_supervisor.rpc import ProcessInfo
from tests.support import metrics


def test_metrics_render_parses(tmp_path):
    processes = {"mlflow": ProcessInfo("mlflow", "RUNNING", 1, 1.0, 0.0, 2.0, 0, "")}
    text = metrics.render(Memory(), processes)
    parsed = list(text_string_to_metric_families(text))
    families = {family.name for family in parsed}
    assert {"mlproxy_up", "mlproxy_ready", "mlproxy_restarts", "mlproxy_stack_ready", "mlproxy_service_state"} <= families
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed for s in f.samples}
    assert samples[("mlproxy_up", (("service", "mlflow"),))] == 1 and samples[("mlproxy_up", (("service", "jupyter"),))] == 0
    assert samples[("mlproxy_service_state", (("service", "jupyter"), ("state", "UNKNOWN")))] == 1
    assert samples[("mlproxy_restarts_total", (("service", "mlflow"),))] == 0
