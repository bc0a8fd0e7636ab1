"""The relay under a hostile client at the protocol level (issue #21): raw HTTP/1.1 that no library
would send, from a client holding the token unless said otherwise.

The relay keeps connections to MLflow alive and shares them between clients, so a request that
desynchronises one would reach the *next* client on it. Each case here was seen to do harm on the
relay before #21 (or was found by the protocol fuzzer, tests/fuzz/test_protocol_fuzz.py); each
asserts what the attacker and the next client see, and that nothing changed in MLflow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest

from tests.support.hostile import unique
from tests.support.raw_http import RawConnection, chunked, request

pytestmark = pytest.mark.hostile

BODYLESS_METHODS = ["GET", "HEAD", "DELETE", "OPTIONS"]
# What MLflow's server logs when it read bytes that were no request of ours (uvicorn's h11 and
# httptools parsers), and a request line glued to stray bytes (b"X" + b"GET ...").
DESYNC_SIGNS = re.compile(r"Invalid HTTP request|[A-Z]GET /|Unsupported upgrade request|malformed", re.IGNORECASE)


def host(target) -> tuple[str, str]:
    return ("Host", f"127.0.0.1:{target.stack.jupyter_port}")


def auth(target) -> tuple[str, str]:
    return ("Authorization", f"token {target.token}")


def exchange(target, data: bytes, responses: int = 1, timeout: float = 30) -> list:
    with RawConnection(target.stack.jupyter_port) as connection:
        connection.send(data)
        return connection.read_responses(responses, timeout, head_requests=int(data.startswith(b"HEAD ")))


def assert_next_clients_are_answered_right(target, offset: int) -> None:
    # The pool hands out the most recently returned connection first: the next clients get the
    # attacker's connection if it went back.
    for _ in range(5):
        assert target.victim_is_answered_right(), "another client's request got someone else's answer"
    log = target.mlflow_log_after(offset, unique("marker"))
    assert not DESYNC_SIGNS.search(log), f"MLflow read bytes that were no request: {DESYNC_SIGNS.search(log)[0]!r}"


@pytest.mark.parametrize("method", BODYLESS_METHODS)
def test_a_chunked_body_on_any_method_reaches_mlflow_framed(target, method):
    offset = target.log_size()
    data = request(method, "/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
                   [host(target), auth(target), ("Transfer-Encoding", "chunked")], chunked(b"X"))
    answers = exchange(target, data)
    assert answers and answers[0].status < 500, answers
    assert_next_clients_are_answered_right(target, offset)


def test_a_request_smuggled_in_a_body_never_captures_the_next_clients_request(target):
    name = unique("cap")
    smuggled = (f"PUT /api/2.0/mlflow-artifacts/artifacts/{target.artifact_path(name)} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nContent-Length: 200\r\n\r\n").encode()
    offset = target.log_size()
    for method in BODYLESS_METHODS:
        exchange(target, request(method, "/mlflow/health", [host(target), auth(target), ("Transfer-Encoding", "chunked")], chunked(smuggled)))
        assert_next_clients_are_answered_right(target, offset)
    assert not target.files_named(name), "the smuggled PUT stored an artifact"
    assert name not in target.mlflow_log_after(offset, unique("marker")), "MLflow read the smuggled request"


def test_a_length_mlflow_reads_is_sent_for_equal_duplicates(target):
    """tornado reads `Content-Length: 5,5` (equal duplicates) as 5: MLflow must be told 5."""
    name = unique("dup-length")
    body = json.dumps({"name": name}).encode()
    data = request("POST", "/mlflow/api/2.0/mlflow/experiments/create",
                   [host(target), auth(target), ("Content-Type", "application/json"), ("Content-Length", f"{len(body)},{len(body)}")], body)
    answers = exchange(target, data)
    assert answers and answers[0].status == 200, answers
    assert target.experiment_exists(name)


BAD_LENGTHS = ["+5", "0x5", "\u0665", "-5", "5 5", "5,6", " ", "5\t,\t5x"]


@pytest.mark.parametrize("length", BAD_LENGTHS, ids=["plus", "hex", "arabic-digit", "negative", "space", "unequal", "blank", "junk"])
@pytest.mark.parametrize("credentials", ["header", "query", "none"])
def test_a_length_tornado_refuses_is_a_400_or_401_never_a_500_and_leaks_nothing(target, length, credentials):
    name = unique("bad-length")
    query = f"?token={target.token}" if credentials == "query" else ""
    headers = [host(target), ("Content-Type", "application/json"), ("Content-Length", length)]
    if credentials == "header":
        headers.append(auth(target))
    jupyter_log_size = target.jupyter_log.stat().st_size
    answers = exchange(target, request("POST", f"/mlflow/api/2.0/mlflow/experiments/create{query}", headers, json.dumps({"name": name}).encode()[:5]))
    assert answers, "no answer"
    assert answers[0].status == (401 if credentials == "none" else 400), answers[0]
    assert not target.experiment_exists(name)
    time.sleep(0.5)  # Jupyter's access log line follows the answer
    assert target.token not in target.jupyter_log.read_bytes()[jupyter_log_size:].decode(errors="replace")


def test_a_websocket_upgrade_is_refused_and_the_token_stays_out_of_the_log(target):
    jupyter_log_size = target.jupyter_log.stat().st_size
    data = request("GET", f"/mlflow/?token={target.token}", [
        host(target), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
    ])  # fmt: skip
    answers = exchange(target, data)
    assert answers and answers[0].status == 400 and b"websocket" in answers[0].body, answers
    time.sleep(0.5)
    log = target.jupyter_log.read_bytes()[jupyter_log_size:].decode(errors="replace")
    assert target.token not in log and "Uncaught exception" not in log, log[-2000:]


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_an_upgrade_header_on_a_request_with_a_body_is_relayed_as_plain_http(target, method):
    name = unique("upgrade")
    body = json.dumps({"name": name}).encode()
    endpoint = "experiments/create" if method == "POST" else "experiments/update"
    data = request(method, f"/mlflow/api/2.0/mlflow/{endpoint}", [
        host(target), auth(target), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
    ], body)  # fmt: skip
    answers = exchange(target, data)
    assert answers, "the connection was dropped with no answer"
    if method == "POST":
        assert answers[0].status == 200, answers[0]
        assert target.experiment_exists(name)
    else:
        assert answers[0].status in (400, 404, 405), answers[0]  # MLflow's own answer, not a drop


@pytest.mark.parametrize("route", ["mlflow", "proxy"])
@pytest.mark.parametrize("form", ["%3Ftoken=", "%3F%74oken=", "%253Ftoken=", "/%3F"])
def test_the_token_in_the_path_never_reaches_mlflow(target, route, form):
    prefix = "/mlflow/" if route == "mlflow" else f"/proxy/{target.stack.mlflow_port}/"
    offset = target.log_size()
    answer = target.raw("GET", f"{prefix}api/2.0/mlflow/experiments/search{form}{target.token}", {"Authorization": f"token {target.token}"})
    assert answer.status in (400, 404), answer
    assert target.token not in target.mlflow_log_after(offset, unique("marker"))


@pytest.mark.parametrize("query", ["{t}", "x=1&{t}", "{t}=1", "x={t_encoded}", "x=%25{t}", "x=Basic%20{t_b64}"])
def test_a_query_holding_the_token_in_any_form_never_reaches_mlflow(target, query):
    import base64

    token = target.token
    spelled = query.format(t=token, t_encoded="".join(f"%{ord(c):02x}" for c in token), t_b64=base64.b64encode(f"u:{token}".encode()).decode())
    marker = unique("q")
    offset = target.log_size()
    answer = target.raw("GET", f"/mlflow/api/2.0/mlflow/experiments/search?max_results=1&marker={marker}&{spelled}", {"Authorization": f"token {token}"})
    assert answer.status == 200, answer
    log = target.mlflow_log_after(offset, unique("marker"))
    assert marker in log, "the request did not reach MLflow"
    assert token not in log and base64.b64encode(f"u:{token}".encode()).decode()[4:40] not in log


def test_a_client_that_leaves_after_pipelining_gets_nothing_more_relayed(target):
    prefix = f"pipe-{uuid.uuid4().hex[:8]}"
    data = b"".join(
        request("GET", f"/mlflow/api/2.0/mlflow/experiments/get-by-name?experiment_name={prefix}-{i}", [host(target), auth(target)])
        for i in range(300)
    )
    jupyter_log_size = target.jupyter_log.stat().st_size
    offset = target.log_size()
    connection = RawConnection(target.stack.jupyter_port)
    # Jupyter frozen while the client sends and leaves, so that it finds all of it at once, the
    # client's end of file included, however busy the machine (a busy one could otherwise relay
    # a few before the client had even closed: those would be relayed rightly).
    jupyter = target.stack.pid("jupyter")
    os.kill(jupyter, signal.SIGSTOP)
    try:
        connection.send(data)
        connection.close()
    finally:
        os.kill(jupyter, signal.SIGCONT)
    time.sleep(3)  # what Jupyter would still relay, it relays in this time (it took ~200 in 2 s before #21)
    relayed = target.mlflow_log_after(offset, unique("marker")).count(prefix)
    assert relayed <= 3, f"{relayed} of 300 requests relayed after the client left"
    assert "Client left before" in target.jupyter_log.read_bytes()[jupyter_log_size:].decode(errors="replace")


def test_a_client_reset_mid_download_is_logged_as_the_clients_doing(target):
    name = unique("big")
    target.put_artifact(name, b"x" * (64 << 20))
    jupyter_log_size = target.jupyter_log.stat().st_size
    connection = RawConnection(target.stack.jupyter_port)
    connection.send(request("GET", f"/mlflow/api/2.0/mlflow-artifacts/artifacts/{target.artifact_path(name)}", [host(target), auth(target)]))
    received = 0
    while received < (1 << 20):
        received += len(connection.socket.recv(65536))
    connection.reset()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = target.jupyter_log.read_bytes()[jupyter_log_size:].decode(errors="replace")
        if "Client closed its connection" in log:
            break
        time.sleep(0.2)
    assert "Client closed its connection" in log, log[-2000:]
    assert "MLflow" not in log.split("Client closed its connection")[0], "logged as MLflow's failure first"
    assert target.victim_is_answered_right()


def test_the_assistant_answers_through_the_route(target):
    """MLflow's Assistant refuses clients it does not see as local; the route's are the stack's
    own user (docs/SECURITY.md). Here no assistant is installed, so MLflow says that, not 403."""
    answer = target.raw("GET", "/mlflow/ajax-api/3.0/mlflow/assistant/providers/claude_code/health", {"Authorization": f"token {target.token}"})
    assert answer.status != 403 and b"same host" not in answer.body, answer
    assert answer.status in (200, 412), answer


def test_pipelined_requests_each_get_their_own_answer(target):
    """Keep-alive and pipelining from one client still work: three requests, three answers, in order."""
    names = [unique("pipelined") for _ in range(3)]
    data = b"".join(request("GET", f"/mlflow/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", [host(target), auth(target)]) for name in names)
    with RawConnection(target.stack.jupyter_port) as connection:
        connection.send(data)
        answers = connection.read_responses(3, 30)
    assert [answer.status for answer in answers] == [404, 404, 404]
    assert all(name.encode() in answer.body for name, answer in zip(names, answers, strict=True))
