"""The agent's metrics as a scrape would return them, without a server (only the tests ask)."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from mlproxy_supervisor.agent.metrics import StackCollector
from mlproxy_supervisor.agent.reconcile import Memory
from mlproxy_supervisor.rpc import ProcessInfo


def render(memory: Memory, processes: dict[str, ProcessInfo]) -> str:
    """The text a scrape returns for this view."""
    collector = StackCollector()
    collector.latest = (memory, processes)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()
