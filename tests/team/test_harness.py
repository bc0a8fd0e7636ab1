"""The team tier's harness itself: real Unix users log in through the Hub's form, their servers and
kernels run as them, servers outlive a Hub restart behind the proxy, and stop() leaves nothing."""

from __future__ import annotations

import pytest

from tests.stack import port_is_free
from tests.support.hub import group_members

pytestmark = pytest.mark.team

WHO_AM_I = "import os, getpass; print(os.getuid(), getpass.getuser())"


def test_each_users_kernel_runs_as_that_user(hub):
    session = hub.login("alice")
    # The login cookie (with the Hub's _xsrf header) is alice's own: the Hub names her.
    assert session.get(hub.api("user"), timeout=30).json()["name"] == "alice"
    hub.spawn("alice", session=session)
    hub.spawn("bob")
    assert hub.execute("alice", WHO_AM_I) == ("ok", f"{hub.uid('alice')} alice\n")
    assert hub.execute("bob", WHO_AM_I) == ("ok", f"{hub.uid('bob')} bob\n")
    assert hub.uid("alice") != hub.uid("bob")


def test_a_server_stays_reachable_through_the_proxy_across_a_hub_restart(hub):
    session = hub.login("alice")
    hub.spawn("alice", session=session)
    kernel_pid = hub.execute("alice", "import os; print(os.getpid())")

    hub.restart_hub()

    status = hub.user_session("alice").get(hub.url("user/alice/api/status"), timeout=30)
    assert status.status_code == 200, status.text
    # The same kernel answers: the server was not restarted, only the Hub was.
    assert hub.execute("alice", "import os; print(os.getpid())") == kernel_pid
    # The cookie secret and the database outlive the restart: alice stays logged in.
    assert session.get(hub.api("user"), timeout=30).json()["name"] == "alice"


def test_stop_leaves_no_process_and_frees_the_ports(make_hub):
    hub = make_hub()
    hub.spawn("carol")
    assert hub.execute("carol", WHO_AM_I)[0] == "ok"
    started = hub.processes()
    # The proxy and the Hub (root), carol's server and kernel (carol), each process group apart.
    assert sorted(info["uid"] for info in started.values()) == [0, 0, hub.uid("carol"), hub.uid("carol")], started
    assert len({info["pgid"] for info in started.values()}) == 4, started

    hub.stop()

    assert not hub.processes()
    assert not [pgid for pgid in {info["pgid"] for info in started.values()} if group_members(pgid)]
    assert all(port_is_free(port) for port in (hub.public_port, hub.proxy_api_port, hub.hub_port))
    assert not hub.directory.exists()
