"""Prometheus metrics on a loopback port: up, readiness, probe latency, restarts, state."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..rpc import ProcessInfo
from .reconcile import SERVICES, Memory, Overall

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SUPERVISOR_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


def render(memory: Memory, processes: dict[str, ProcessInfo]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    def service_samples(value) -> list[tuple[str, float]]:
        return [(f'{{service="{name}"}}', float(value(name))) for name in SERVICES]

    alive = {name: processes.get(name) is not None and processes[name].state in ("RUNNING", "STARTING") for name in SERVICES}
    family("mlproxy_up", "gauge", "1 if supervisord reports the service's process alive.", service_samples(lambda n: alive[n]))
    family("mlproxy_ready", "gauge", "1 if the service passes its readiness probe.", service_samples(lambda n: memory.services[n].ready))
    family("mlproxy_restarts_total", "counter", "Times the service's process was replaced.", service_samples(lambda n: memory.services[n].restarts))
    latency = []
    for name, mem in memory.services.items():
        if mem.last_probe is not None:
            latency.append((f'{{service="{name}",probe="{mem.last_probe.kind}"}}', mem.last_probe.latency))
    if memory.route.last_probe is not None:
        latency.append(('{service="route",probe="readiness"}', memory.route.last_probe.latency))
    family("mlproxy_probe_latency_seconds", "gauge", "Duration of the most recent probe.", latency)
    states = []
    for name in SERVICES:
        current = processes[name].state if name in processes else "UNKNOWN"
        states.extend((f'{{service="{name}",state="{state}"}}', float(state == current)) for state in SUPERVISOR_STATES)
    family("mlproxy_service_state", "gauge", "supervisord state of the service (1 for the current one).", states)
    family("mlproxy_route_ready", "gauge", "1 if MLflow answers through Jupyter (/mlflow/ and /proxy/<port>/).", [("", float(memory.route.ready))])
    family("mlproxy_stack_ready", "gauge", "1 if the whole stack is ready.", [("", float(memory.overall is Overall.READY))])
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves the agent's latest view, rendered when scraped (not at every loop step)."""

    def __init__(self, port: int):
        self.latest: tuple[Memory, dict[str, ProcessInfo]] | None = None  # replaced whole: no lock
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                latest = server.latest
                body = (render(*latest) if latest else "# no data yet\n").encode()
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

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
