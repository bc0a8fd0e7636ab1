"""The agent's loop: what it asks supervisord at each step."""

from __future__ import annotations

import pytest

from mlproxy_supervisor.config import Settings


def test_agent_observes_supervisord_with_one_call_per_step(tmp_path):
    from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
    from supervisor.states import SupervisorStates
    from supervisor.xmlrpc import Faults, RPCError

    from mlproxy_supervisor.agent.loop import Agent
    from mlproxy_supervisor.rpc import SHUTDOWN_STATE_FAULT

    # The premise: shutting down or restarting, supervisord refuses getAllProcessInfo itself,
    # so an answer to it means RUNNING (getState can only ever say RUNNING either).
    for mood in (SupervisorStates.SHUTDOWN, SupervisorStates.RESTARTING):
        supervisord = type("Supervisord", (), {"options": type("Options", (), {"mood": mood})(), "process_groups": {}})()
        with pytest.raises(RPCError) as refused:
            SupervisorNamespaceRPCInterface(supervisord).getAllProcessInfo()
        assert refused.value.code == Faults.SHUTDOWN_STATE == SHUTDOWN_STATE_FAULT

    class Fake:
        calls: list[str] = []

        def processes(self):
            self.calls.append("getAllProcessInfo")
            return {}

        def pid(self):
            self.calls.append("getPID")
            return 42

        def state(self):
            raise AssertionError("getState is a wasted call")

    agent = Agent(Settings(state_dir=tmp_path, agent={"metrics_port": 0}))
    agent.supervisor = Fake()
    assert agent.observe() == ("RUNNING", {}) and agent.observe() == ("RUNNING", {})
    assert Fake.calls == ["getAllProcessInfo", "getPID", "getAllProcessInfo"]
