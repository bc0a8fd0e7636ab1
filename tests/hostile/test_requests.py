"""Odd routes, SSRF targets, traversal, Host tricks, oversized and slow requests.

Each case is sent with the real token where that makes the attack stronger (an authenticated user
must still not reach beyond MLflow's API), and asserts the refusal and that nothing changed.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.support.hostile import unique

pytestmark = pytest.mark.hostile

PASSWD = b"root:x:0:0"


def auth(target) -> dict:
    return {"Authorization": f"token {target.token}"}


# Spellings of MLflow's port that we refuse rather than serve: an absolute route would hand
# MLflow its own prefix, and other names of loopback are not guessed at.
REFUSED_SPELLINGS = [
    "/proxy/absolute/{p}/", "/proxy/absolute/0{p}/", "/proxy/absolute/localhost:{p}/",
    "/proxy/absolute/%6cocalhost:0{p}/", "/proxy/127.1:{p}/", "/proxy/LOCALHOST:{p}/", "/proxy/localhost.:{p}/",
    "/proxy/0.0.0.0:{p}/", "/proxy/0x7f.0.0.1:{p}/", "/proxy/2130706433:{p}/",
]
# Paths that look like MLflow's port but no handler serves (jupyter-server-proxy needs raw digits).
UNSERVED_SPELLINGS = ["/proxy/%35001/", "/proxy/localhost%3a{p}/", "/proxy/[::1]:{p}/", "/proxy/127.0.0.1@localhost:{p}/",
                      "/proxy/{p}%2f/", "/PROXY/{p}/", "/proxy/+{p}/", "/proxy/-{p}/"]


@pytest.mark.parametrize("spelling", REFUSED_SPELLINGS + UNSERVED_SPELLINGS)
def test_spellings_we_do_not_serve_never_reach_mlflow(target, spelling):
    route = spelling.format(p=target.stack.mlflow_port).replace("%35001", f"%3{str(target.stack.mlflow_port)[0]}{str(target.stack.mlflow_port)[1:]}")
    name = unique("spelling")
    marker = unique("case")
    offset = target.log_size()
    answer = target.raw("POST", f"{route}api/2.0/mlflow/experiments/create?case={marker}",
                        {**auth(target), "Content-Type": "application/json"}, json.dumps({"name": name}).encode())
    assert answer.status in (403, 404), f"{answer.status}: {answer.body[:300]!r}"
    assert not target.experiment_exists(name)
    assert marker not in target.mlflow_log_after(offset, unique("marker")), "the request reached MLflow"


def ssrf_targets(target) -> dict[str, str]:
    stack = target.stack
    return {
        "agent-metrics": f"/proxy/{stack.metrics_port}/metrics",
        "agent-metrics-by-name": f"/proxy/localhost:{stack.metrics_port}/metrics",
        "jupyter-itself": f"/proxy/{stack.jupyter_port}/api/contents",
        "jupyter-by-name": f"/proxy/127.0.0.1:{stack.jupyter_port}/api/contents",
        "other-loopback": f"/proxy/127.0.0.2:{stack.mlflow_port}/health",
        "unresolvable-host": "/proxy/mlproxy-ssrf.invalid:80/",
        "mlflow-absolute": f"/proxy/absolute/{stack.mlflow_port}/api/2.0/mlflow/experiments/search",
        "closed-port": "/proxy/1/",
    }


SSRF = ["agent-metrics", "agent-metrics-by-name", "jupyter-itself", "jupyter-by-name", "other-loopback",
        "unresolvable-host", "mlflow-absolute", "closed-port"]


@pytest.mark.parametrize("name", SSRF)
def test_ssrf_without_login_is_refused(target, name):
    answer = target.raw("GET", ssrf_targets(target)[name])
    assert answer.refused(), f"{answer.status}: {answer.body[:300]!r}"
    assert b"mlproxy_up" not in answer.body and b'"content"' not in answer.body


@pytest.mark.parametrize("name", ["other-loopback", "unresolvable-host", "mlflow-absolute"])
def test_ssrf_beyond_the_allowlist_is_refused_with_login(target, name):
    answer = target.raw("GET", ssrf_targets(target)[name], auth(target))
    assert answer.status in (403, 404), f"{answer.status}: {answer.body[:300]!r}"


TRAVERSALS = [
    "/mlflow/../api/contents",
    "/mlflow/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/mlflow/static-files/../../../../../../etc/passwd",
    "/mlflow/static-files/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/mlflow/static-files/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/proxy/{p}/static-files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/mlflow/get-artifact?path=../../../../../../etc/passwd&run_uuid={run}",
    "/mlflow/get-artifact?path=%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd&run_uuid={run}",
    "/mlflow/ajax-api/2.0/mlflow-artifacts/artifacts/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/mlflow/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/mlflow/api/2.0/mlflow-artifacts/artifacts/%2Fetc%2Fpasswd",
    "/mlflow/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run}&path=../../../../../../etc",
]


@pytest.mark.parametrize("number", range(len(TRAVERSALS)))
def test_traversal_reads_nothing_outside_mlflow(target, number):
    path = TRAVERSALS[number].format(p=target.stack.mlflow_port, run=target.run_id)
    answer = target.raw("GET", path, auth(target))
    assert PASSWD not in answer.body, f"{path}: {answer.status} served /etc/passwd"
    assert b'"content"' not in answer.body, f"{path} reached Jupyter's contents API"
    assert b"passwd" not in answer.body or answer.status >= 400


ESCAPES = ["..%2f..%2f{name}", "%2e%2e/%2e%2e/%2e%2e/{name}", "..%5c..%5c{name}", "%2f{tmp}%2f{name}"]


@pytest.mark.parametrize("number", range(len(ESCAPES)))
def test_artifact_upload_cannot_escape_the_artifact_store(target, number):
    name = unique("escape")
    path = ESCAPES[number].format(name=name, tmp="tmp")
    answer = target.raw("PUT", f"/mlflow/api/2.0/mlflow-artifacts/artifacts/{path}", auth(target), b"escaped\n")
    artifacts = target.stack.state_dir / "artifacts"
    outside = [found for found in target.files_named(name) if artifacts not in found.parents]
    outside += [found for found in (target.stack.state_dir.parent, target.stack.state_dir, __import__("pathlib").Path("/tmp"))
                for found in found.glob(f"*{name}*")]
    assert not outside, f"{answer.status}: written outside the artifact store: {outside}"


def test_redirect_never_names_mlflows_internal_address(target):
    for route in ("/mlflow/", f"/proxy/{target.stack.mlflow_port}/", f"/proxy/0{target.stack.mlflow_port}/"):
        answer = target.raw("GET", f"{route}static-files//x", auth(target))
        location = answer.headers.get("location", "")
        assert f":{target.stack.mlflow_port}/" not in location.replace(route, "/"), f"{route}: {answer.status} {location}"
        assert "127.0.0.1" not in location and "localhost" not in location, f"{route}: {answer.status} {location}"
        if 300 <= answer.status < 400:  # under the route asked, or the canonical one
            prefixes = (route, "/mlflow/", f"/proxy/{target.stack.mlflow_port}/")
            assert location.startswith(tuple(f"{prefix}static-files/" for prefix in prefixes)), location


def host_tricks(target) -> dict[str, dict]:
    jupyter, mlflow = target.stack.jupyter_port, target.stack.mlflow_port
    return {
        "rebinding-name": {"Host": f"attacker.example:{jupyter}", "Origin": f"http://attacker.example:{jupyter}"},
        "mlflows-own-host": {"Host": f"127.0.0.1:{mlflow}", "Origin": f"http://127.0.0.1:{mlflow}"},
        "empty-host": {"Host": ""},
        "userinfo-host": {"Host": f"127.0.0.1:{jupyter}@attacker.example"},
        "forwarded-host": {"X-Forwarded-Host": f"127.0.0.1:{mlflow}", "X-Forwarded-Proto": "https"},
    }


@pytest.mark.parametrize("trick", ["rebinding-name", "mlflows-own-host", "empty-host", "userinfo-host", "forwarded-host"])
def test_host_tricks_without_login_are_refused(target, trick):
    name = unique(f"host-{trick}")
    answer = target.raw("POST", "/mlflow/api/2.0/mlflow/experiments/create",
                        {**host_tricks(target)[trick], "Content-Type": "application/json"}, json.dumps({"name": name}).encode())
    assert answer.refused(), f"{answer.status}: {answer.body[:300]!r}"
    assert not target.experiment_exists(name)


def test_rebinding_name_with_the_login_cookie_origin_is_not_trusted_for_another_origin(target):
    """A page at attacker.example rebound to loopback: its Origin matches its Host, but it has no
    Jupyter login (the cookie belongs to 127.0.0.1), and a token in its URL it cannot know."""
    name = unique("rebinding")
    answer = target.raw("POST", f"/proxy/0{target.stack.mlflow_port}/ajax-api/2.0/mlflow/experiments/create",
                        {"Host": f"attacker.example:{target.stack.jupyter_port}",
                         "Origin": f"http://attacker.example:{target.stack.jupyter_port}", "Content-Type": "text/plain"},
                        json.dumps({"name": name}).encode())
    assert answer.refused() and not target.experiment_exists(name)


def test_oversized_header_is_refused(target):
    name = unique("bigheader")
    try:
        answer = target.raw("POST", "/mlflow/api/2.0/mlflow/experiments/create",
                            {**auth(target), "X-Padding": "a" * 200_000, "Content-Type": "application/json"},
                            json.dumps({"name": name}).encode())
        status = answer.status
    except (ConnectionError, http.client.RemoteDisconnected):
        status = "closed"  # tornado drops a connection whose headers exceed its limit
    assert status in (400, 431, "closed"), status
    assert not target.experiment_exists(name)


def test_huge_declared_body_is_refused_before_it_is_sent(target):
    """Content-Length of 10 GB: refused from the headers alone; the client never sends a byte."""
    with socket.create_connection(("127.0.0.1", target.stack.jupyter_port), timeout=60) as connection:
        connection.sendall(
            f"PUT /mlflow/api/2.0/mlflow-artifacts/artifacts/{target.artifact_path('huge.bin')} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{target.stack.jupyter_port}\r\nContent-Length: {10 << 30}\r\n\r\n".encode()
        )
        reply = connection.recv(4096)
    assert reply.split(b" ")[1] in (b"400", b"401", b"403", b"413"), reply[:200]
    assert not target.files_named("huge.bin")


@pytest.mark.parametrize("endpoint", ["upload", "put"])
def test_large_body_without_login_writes_nothing(target, endpoint):
    name = unique("bigbody")
    body = b"x" * (8 << 20)
    # The handler refuses from the headers, before reading a byte of body (relay/handler.py): a
    # body this big is not drained first, so the client either reads the 401 or, still sending,
    # meets the closed connection. Either way it is refused, and nothing may be written.
    try:
        if endpoint == "upload":
            path = f"/mlflow/ajax-api/2.0/mlflow/upload-artifact?run_uuid={target.run_id}&path={name}"
            answer = target.raw("POST", path, {"Content-Type": "text/plain"}, body)
        else:
            answer = target.raw("PUT", f"/mlflow/api/2.0/mlflow-artifacts/artifacts/{target.artifact_path(name)}", {}, body)
    except (ConnectionResetError, BrokenPipeError):
        pass
    else:
        assert answer.status == 401, answer.status  # no token: MLflow's error shape, before the body
    assert not target.files_named(name)


def test_slow_clients_do_not_block_the_route(target):
    """Thirty connections that trickle their headers a byte at a time; a user's request is
    still answered meanwhile, and none of the slow ones wrote anything."""
    name = unique("slow")
    slow = []
    try:
        for _ in range(30):
            connection = socket.create_connection(("127.0.0.1", target.stack.jupyter_port), timeout=60)
            connection.sendall(b"POST /mlflow/api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
            slow.append(connection)
        for connection in slow:
            connection.sendall(b"a")
        time.sleep(1)
        for connection in slow:
            connection.sendall(b"a")
        answer = target.raw("POST", "/mlflow/api/2.0/mlflow/experiments/create",
                            {**auth(target), "Content-Type": "application/json"}, json.dumps({"name": name}).encode())
        assert answer.status == 200, answer.status
        for connection in slow:
            connection.sendall(b"\r\nContent-Length: 30\r\n\r\n" + json.dumps({"name": name + "x"}).encode()[:30])
    finally:
        for connection in slow:
            connection.close()
    assert target.experiment_exists(name) and not target.experiment_exists(name + "x")
