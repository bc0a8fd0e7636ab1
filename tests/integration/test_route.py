"""MLflow through Jupyter's port: UI, REST API, auth, any hostname, and no cross-origin writes."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import requests

from tests.stack import Stack
from tests.support.direct import DirectMLflow

pytestmark = pytest.mark.integration

ROUTES = ["mlflow", "proxy"]  # "proxy" stands for /proxy/<mlflow port>


def prefix(stack, route: str) -> str:
    return f"proxy/{stack.mlflow_port}" if route == "proxy" else route


@pytest.mark.parametrize("route", ROUTES)
def test_ui_is_served_with_its_assets(shared_stack, route):
    session = shared_stack.session()
    page = session.get(shared_stack.url(f"{prefix(shared_stack, route)}/"), timeout=10)
    assert page.status_code == 200
    assert "<title>MLflow</title>" in page.text
    # The UI loads its scripts relative to the page: they must resolve under the prefix.
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', page.text)
    assert scripts, "no script tags in MLflow's index.html"
    asset = session.get(shared_stack.url(f"{prefix(shared_stack, route)}/{scripts[0].lstrip('./')}"), timeout=10)
    assert asset.status_code == 200 and len(asset.content) > 1000


@pytest.mark.parametrize("route", ROUTES)
def test_rest_api_creates_and_reads(shared_stack, route):
    session = shared_stack.session()
    name = f"route-{route.replace('/', '-')}-{uuid.uuid4().hex[:6]}"
    created = session.post(shared_stack.url(f"{prefix(shared_stack, route)}/api/2.0/mlflow/experiments/create"), json={"name": name}, timeout=10)
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    other = prefix(shared_stack, "proxy" if route == "mlflow" else "mlflow")
    found = session.get(shared_stack.url(f"{other}/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": name}, timeout=10)
    assert found.json()["experiment"]["experiment_id"] == experiment_id


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("route", ROUTES)
def test_without_token_a_browser_is_sent_to_login_and_an_api_client_gets_401(shared_stack, route):
    page = requests.get(shared_stack.url(f"{prefix(shared_stack, route)}/"), headers={"Accept": BROWSER_ACCEPT}, allow_redirects=False, timeout=10)
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    # An API client (MLflow's own sends Accept: */*) gets MLflow's error shape, naming the variable.
    name = f"nope-{uuid.uuid4().hex[:6]}"
    write = requests.post(shared_stack.url(f"{prefix(shared_stack, route)}/api/2.0/mlflow/experiments/create"), json={"name": name}, timeout=10)
    assert write.status_code == 401 and write.json()["error_code"] == "UNAUTHENTICATED"
    assert "no token" in write.json()["message"] and "MLFLOW_TRACKING_TOKEN" in write.json()["message"]
    presented = f"not-the-token-{uuid.uuid4().hex}"
    wrong = requests.get(shared_stack.url(f"{prefix(shared_stack, route)}/api/2.0/mlflow/experiments/search"), headers={"Authorization": f"token {presented}"}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "token is wrong" in wrong.json()["message"] and "MLFLOW_TRACKING_TOKEN" in wrong.json()["message"]
    assert presented not in wrong.text, "the presented token must not be echoed"
    page_api = requests.get(shared_stack.url(f"{prefix(shared_stack, route)}/ajax-api/2.0/mlflow/experiments/search"), headers={"Accept": BROWSER_ACCEPT}, allow_redirects=False, timeout=10)
    assert page_api.status_code == 401, "an API path is an API call, even from a browser"
    lookup = shared_stack.session().get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": name}, timeout=10)
    assert lookup.status_code == 404, "the refused write reached MLflow"


def test_bearer_token_is_accepted_like_mlflow_tracking_token_sends_it(shared_stack):
    answer = requests.get(
        shared_stack.url("mlflow/api/2.0/mlflow/experiments/search"),
        params={"max_results": 1},
        headers={"Authorization": f"Bearer {shared_stack.token}"},
        timeout=10,
    )
    assert answer.status_code == 200 and "experiments" in answer.json()


@pytest.mark.parametrize("host", ["myvm.example.com", "10.20.30.40"])
@pytest.mark.parametrize("route", ROUTES)
def test_any_hostname_reads_and_writes_same_origin(shared_stack, host, route):
    session = shared_stack.session()
    host = f"{host}:{shared_stack.jupyter_port}"
    session.headers["Host"] = host
    page = session.get(shared_stack.url(f"{prefix(shared_stack, route)}/"), timeout=10)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
    listed = session.get(shared_stack.url(f"{prefix(shared_stack, route)}/ajax-api/2.0/mlflow/experiments/search"), params={"max_results": 5}, timeout=10)
    assert listed.status_code == 200, listed.text
    # What the UI sends for "rename experiment": a JSON POST with the page's own Origin.
    name = f"host-{uuid.uuid4().hex[:8]}"
    created = session.post(
        shared_stack.url(f"{prefix(shared_stack, route)}/ajax-api/2.0/mlflow/experiments/create"),
        json={"name": name},
        headers={"Origin": f"http://{host}"},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    renamed = session.post(
        shared_stack.url(f"{prefix(shared_stack, route)}/ajax-api/2.0/mlflow/experiments/update"),
        json={"experiment_id": created.json()["experiment_id"], "new_name": name + "-renamed"},
        headers={"Origin": f"http://{host}"},
        timeout=10,
    )
    assert renamed.status_code == 200, renamed.text


@pytest.mark.parametrize("origin", ["http://evil.example.com", "http://localhost:9999", "http://127.0.0.1:9999", "null"])
@pytest.mark.parametrize("route", ROUTES)
def test_cross_origin_write_is_refused(shared_stack, origin, route):
    session = shared_stack.session()
    name = f"evil-{uuid.uuid4().hex[:8]}"
    answer = session.post(
        shared_stack.url(f"{prefix(shared_stack, route)}/ajax-api/2.0/mlflow/experiments/create"),
        data=f'{{"name": "{name}"}}',
        headers={"Origin": origin, "Content-Type": "text/plain"},
        timeout=10,
    )
    assert answer.status_code == 403
    lookup = session.get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": name}, timeout=10)
    assert lookup.status_code == 404, "the refused write must not have reached MLflow"


def _logged_in(stack) -> requests.Session:
    """A browser-like session: logged in through Jupyter's login form, cookie only."""
    session = requests.Session()
    session.get(stack.url("login"), timeout=10)
    answer = session.post(stack.url("login"), data={"password": stack.token, "_xsrf": session.cookies["_xsrf"]}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return session


def test_cookie_session_writes_only_from_its_own_origin(shared_stack):
    session = _logged_in(shared_stack)
    url = shared_stack.url("mlflow/ajax-api/2.0/mlflow/experiments/create")
    own = session.post(url, json={"name": f"cookie-{uuid.uuid4().hex[:8]}"}, headers={"Origin": shared_stack.base}, timeout=10)
    assert own.status_code == 200, own.text
    # Another port on the same host is the same site: the browser sends the cookie along.
    foreign = session.post(url, data='{"name": "csrf"}', headers={"Origin": "http://127.0.0.1:9999", "Content-Type": "text/plain"}, timeout=10)
    assert foreign.status_code == 403
    anonymous = session.post(url, json={"name": "no-origin"}, timeout=10)
    assert anonymous.status_code == 403, "a cookie-authenticated write without Origin or Referer must be refused"


def test_cross_origin_read_gets_no_cors_grant(shared_stack):
    answer = shared_stack.session().get(
        shared_stack.url("mlflow/ajax-api/2.0/mlflow/experiments/search"), headers={"Origin": "http://localhost:9999"}, timeout=10
    )
    assert answer.status_code == 403
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_mlflow_itself_still_refuses_foreign_hosts(shared_stack):
    # MLflow's own Host check stays on behind the socket (a second line against DNS rebinding).
    direct = DirectMLflow(shared_stack.mlflow_socket).get("/ajax-api/2.0/mlflow/experiments/search", headers={"Host": "rebind.example.com"})
    assert direct.status_code == 403


def loopback_listeners(port: int) -> set[str]:
    listeners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, listening_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(listening_port, 16) == port:
                listeners.add(address)
    return listeners


def test_mlflow_listens_on_its_socket_not_on_tcp(shared_stack):
    assert loopback_listeners(shared_stack.mlflow_port) == set(), "MLflow's port has a TCP listener"
    assert shared_stack.settings.mlflow_socket == shared_stack.mlflow_socket == shared_stack.state_dir / "run" / "mlflow.sock"
    assert shared_stack.mlflow_socket.is_socket()
    assert DirectMLflow(shared_stack.mlflow_socket).get("/health").content == b"OK"


@pytest.fixture(scope="module")
def tcp_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("tcp") / "state", env={"MLPROXY_MLFLOW__LISTEN": "tcp"}).start()
    yield stack
    assert stack.stop() == 0


def test_listen_tcp_puts_mlflow_on_loopback_only_and_the_routes_still_work(tcp_stack):
    # The old behaviour, kept as a setting: MLflow on 127.0.0.1:<port>, where any local user or page reaches it.
    assert loopback_listeners(tcp_stack.mlflow_port) == {"0100007F"}, "expected 127.0.0.1 only"
    assert tcp_stack.mlflow_socket is None and not (tcp_stack.state_dir / "run" / "mlflow.sock").exists()
    assert requests.get(f"http://127.0.0.1:{tcp_stack.mlflow_port}/health", timeout=30).text == "OK"
    session = tcp_stack.session()
    for route in ("mlflow", f"proxy/{tcp_stack.mlflow_port}"):
        answer = session.get(tcp_stack.url(f"{route}/api/2.0/mlflow/experiments/search"), params={"max_results": 1}, timeout=30)
        assert answer.status_code == 200 and "experiments" in answer.json(), answer.text


def test_launcher_entry_and_icon(shared_stack):
    session = shared_stack.session()
    servers = session.get(shared_stack.url("server-proxy/servers-info"), timeout=10).json()["server_processes"]
    mlflow = next(server for server in servers if server["name"] == "mlflow")
    assert mlflow["launcher_entry"]["title"] == "MLflow"
    assert mlflow["launcher_entry"]["path_info"] == "mlflow/"
    # JupyterLab shows icon_url only for cards in its kernel categories (Notebook, Console).
    assert mlflow["launcher_entry"]["category"] == "Notebook"
    icon = session.get(mlflow["launcher_entry"]["icon_url"] if mlflow["launcher_entry"]["icon_url"].startswith("http") else shared_stack.url(mlflow["launcher_entry"]["icon_url"]), timeout=10)
    assert icon.status_code == 200 and b"<svg" in icon.content


def test_token_stays_out_of_query_forwarded_to_mlflow(shared_stack):
    requests.get(shared_stack.url(f"mlflow/health?token={shared_stack.token}"), timeout=10)
    mlflow_log = (shared_stack.state_dir / "logs" / "mlflow.log").read_text()
    assert shared_stack.token not in mlflow_log


def test_access_log_keeps_user_requests_and_drops_the_agents_probes(shared_stack):
    shared_stack.session().get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/search?max_results=7"), timeout=10)
    log = (shared_stack.state_dir / "logs" / "mlflow.log").read_text()
    assert "GET /api/2.0/mlflow/experiments/search?max_results=7 HTTP/1.1" in log
    assert '"GET /health HTTP/1.1"' not in log
    assert '"GET /api/2.0/mlflow/experiments/search?max_results=1 HTTP/1.1"' not in log
