"""Every spelling of /proxy/<host>:<port>/ that jupyter-server-proxy sends to MLflow is ours."""

from __future__ import annotations

import pytest

from mlproxy_supervisor.jupyter.routes import mlflow_target

PORT = 5001


@pytest.mark.parametrize(
    ("path", "proxied"),
    [
        ("/proxy/5001/", b"/"),
        ("/proxy/05001/api/2.0/mlflow/experiments/search", b"/api/2.0/mlflow/experiments/search"),
        ("/proxy/0000005001/x", b"/x"),
        ("/proxy/localhost:5001/", b"/"),
        ("/proxy/localhost:05001/", b"/"),
        ("/proxy/127.0.0.1:5001/", b"/"),
        ("/proxy/127.0.0.1:005001/", b"/"),
        ("/proxy/%6cocalhost:5001/", b"/"),
        ("/proxy/%6C%6F%63%61%6C%68%6F%73%74:5001/", b"/"),
        ("/proxy/127.0.0.%31:5001/", b"/"),
        ("/proxy/5001/a%2Fb", b"/a/b"),
    ],
)
def test_local_spellings_are_served(path, proxied):
    assert mlflow_target(path, "/", PORT) == ("serve", proxied)


@pytest.mark.parametrize("path", ["/proxy/5001", "/proxy/05001", "/proxy/localhost:5001", "/proxy/%6cocalhost:5001"])
def test_a_local_spelling_without_its_slash_gets_one(path):
    """MLflow's page without the slash loads, but its relative asset URLs miss: redirect instead."""
    assert mlflow_target(path, "/", PORT) == ("add-slash", b"")


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/absolute/5001/",
        "/proxy/absolute/05001/x",
        "/proxy/absolute/localhost:5001/",
        "/proxy/absolute/%6cocalhost:05001/",
        "/proxy/127.1:5001/",
        "/proxy/LOCALHOST:5001/",
        "/proxy/localhost.:5001/",
        "/proxy/0x7f.1:5001/",
        "/proxy/example.com:5001/",
    ],
)
def test_other_spellings_of_the_port_are_refused(path):
    assert mlflow_target(path, "/", PORT) == ("refuse", b"")


@pytest.mark.parametrize(
    "path",
    ["/proxy/5002/", "/proxy/50010/", "/proxy/15001/", "/proxy/localhost:5002/", "/mlflow/", "/proxy/%35001/",
     "/proxy/localhost%3a5001/", "/lab", "/proxy/" + "0" * 5000 + "1/", "/proxy/" + "9" * 5000 + "/"],
)
def test_other_paths_are_not_ours(path):
    assert mlflow_target(path, "/", PORT) is None


def test_base_url():
    assert mlflow_target("/jh/user/x/proxy/05001/y", "/jh/user/x/", PORT) == ("serve", b"/y")
    assert mlflow_target("/proxy/05001/y", "/jh/user/x/", PORT) is None
