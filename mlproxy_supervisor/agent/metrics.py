"""Prometheus metrics on a loopback port: up, readiness, probe latency, restarts, state.

A prometheus_client custom collector (prometheus_client comes with jupyter_server): the families
are built from the agent's latest view when scraped, not at every loop step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .. import watchdog
from ..config import Settings
from ..rpc import ALIVE_STATES, STATES, UNKNOWN, ProcessInfo
from .reconcile import ROUTE, Memory, Overall

CONTENT_TYPE = CONTENT_TYPE_LATEST


def families(memory: Memory, processes: dict[str, ProcessInfo]) -> Iterator[Metric]:
    def per_service(family, value) -> Metric:
        for name in memory.services:
            family.add_metric([name], float(value(name)))
        return family

    yield per_service(
        GaugeMetricFamily("mlproxy_up", "1 if supervisord reports the service's process alive.", labels=["service"]),
        lambda n: n in processes and processes[n].state in ALIVE_STATES,
    )
    yield per_service(
        GaugeMetricFamily("mlproxy_ready", "1 if the service passes its readiness probe.", labels=["service"]),
        lambda n: memory.services[n].ready,
    )
    yield per_service(
        CounterMetricFamily("mlproxy_restarts", "Times the service's process was replaced.", labels=["service"]),
        lambda n: memory.services[n].restarts,
    )
    latency = GaugeMetricFamily("mlproxy_probe_latency_seconds", "Duration of the most recent probe.", labels=["service", "probe"])
    for name, service in memory.services.items():
        if service.last_probe is not None:
            latency.add_metric([name, service.last_probe.kind], service.last_probe.latency)
    if memory.route.last_probe is not None:
        latency.add_metric([ROUTE, "readiness"], memory.route.last_probe.latency)
    yield latency
    states = GaugeMetricFamily("mlproxy_service_state", "supervisord state of the service (1 for the current one).", labels=["service", "state"])
    for name in memory.services:
        current = processes[name].state if name in processes else UNKNOWN
        for state in STATES:
            states.add_metric([name, state], float(state == current))
    yield states
    yield GaugeMetricFamily("mlproxy_route_ready", "1 if MLflow answers through its front door (Jupyter's /mlflow/ and /proxy/<port>/, or the Hub's /services/<name>/).", value=float(memory.route.ready))
    yield GaugeMetricFamily("mlproxy_stack_ready", "1 if the whole stack is ready.", value=float(memory.overall is Overall.READY))


def watchdog_families(settings: Settings) -> Iterator[Metric]:
    """The view of `up`'s watcher, read when scraped: the metrics thread answers even while the
    agent's loop is frozen, so a scrape shows the heartbeat growing old."""
    report = watchdog.report(settings)
    if report is None:
        return
    if report.heartbeat_age_s is not None:
        yield GaugeMetricFamily("mlproxy_agent_heartbeat_age_seconds", "Seconds since the agent's loop last touched its heartbeat.", value=report.heartbeat_age_s)
    yield GaugeMetricFamily("mlproxy_agent_heartbeat_budget_seconds", "Heartbeat age at which `mlproxy up` replaces the agent.", value=report.heartbeat_budget_s)
    replaced = CounterMetricFamily("mlproxy_watchdog_replacements", "Times `mlproxy up` replaced a frozen process.", labels=["process", "cause"])
    for process, cause in watchdog.CAUSES.items():
        replaced.add_metric([process, cause], float(report.replaced.get(process, 0)))
    yield replaced


class StackCollector:
    """Collects from the agent's latest view (replaced whole by the loop: no lock needed)."""

    def __init__(self):
        self.latest: tuple[Memory, dict[str, ProcessInfo]] | None = None

    def collect(self) -> Iterator[Metric]:
        latest = self.latest
        if latest is not None:
            yield from families(*latest)


class WatchdogCollector:
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from watchdog_families(self.settings)


class MetricsServer:
    """Serves /metrics on 127.0.0.1; the agent sets `latest` after each step."""

    def __init__(self, port: int, settings: Settings):
        self._collector = StackCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        self._registry.register(WatchdogCollector(settings))
        registry = self._registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood the log
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True).start()

    @property
    def latest(self) -> tuple[Memory, dict[str, ProcessInfo]] | None:
        return self._collector.latest

    @latest.setter
    def latest(self, view: tuple[Memory, dict[str, ProcessInfo]]) -> None:
        self._collector.latest = view

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
