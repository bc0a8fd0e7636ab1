"""A protocol fuzzer for the route: hypothesis writes raw HTTP/1.1 at Jupyter, then checks that the
next client is unharmed. Used by the fuzz tier (tests/fuzz/test_protocol_fuzz.py, thousands of
cases) and the long run (benchmarks/protocol_fuzz.py, 100,000).

The method follows the request-smuggling work of PortSwigger (framing headers spelled so that two
HTTP processors disagree: TE and CL together, duplicated, odd whitespace and case, obs-fold) and
the HTTP Garden's differential fuzzing (the same bytes through a chain of processors, looking for
a place where they read different messages). Here the chain is tornado (Jupyter) -> our relay ->
uvicorn (MLflow), and the disagreement we look for is any byte MLflow reads as a request that the
relay did not send as one.

Each case is one client connection: up to three requests written back to back (pipelined), each
with generated method, route, credentials, framing headers, body, Expect/Upgrade/Connection, and
an ending (read the answers, close or reset right after sending, cut mid-request, or leave
mid-response). After it, a victim request on another connection must get the answer to *its*
request. Over the whole run, the checks in `Run.violations()`:
- MLflow's log never shows a request smuggled in a body (their targets carry SMUGGLED), nor a
  request line glued to stray bytes, nor a parser error;
- the token is in neither jupyter.log nor mlflow.log, in any encoding;
- no unauthenticated request was answered 500;
- Jupyter's memory stays bounded.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from mlproxy_supervisor.relay.scrub import secret_pattern
from tests.support.hostile import Target
from tests.support.raw_http import RawConnection, request

SMUGGLED = "SMUGGLED"  # in every target hidden in a body; MLflow must never read one as a request
DESYNC_SIGNS = re.compile(r"Invalid HTTP request|[A-Z]GET /|malformed|SMUGGLED", re.IGNORECASE)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ODD_METHODS = ["TRACE", "PROPFIND", "get", "CONNECT"]
ENDPOINTS = [
    "health",
    "version",
    "api/2.0/mlflow/experiments/search?max_results=1",
    "api/2.0/mlflow/experiments/get-by-name?experiment_name=fuzz",
    "api/2.0/mlflow/experiments/create",
    "ajax-api/2.0/mlflow/experiments/search",
    "api/2.0/mlflow-artifacts/artifacts/fuzz/upload.bin",
    "static-files/x",
    "no-such-page",
]
ENDINGS = (["read"], ["close", "reset", "cut-request", "leave-mid-response"])  # usual, odd


@dataclass
class Case:
    messages: list[bytes]
    credentials: list[bool]  # per message: carries a valid credential
    heads: int  # leading HEAD requests (their answers have no body)
    ending: str
    cut: float  # fraction of the bytes sent, for cut-request

    @property
    def data(self) -> bytes:
        return b"".join(self.messages)


@dataclass
class Run:
    """What the fuzzer saw, and the invariants over it."""

    target: Target
    cases: int = 0
    victims_wrong: list[str] = field(default_factory=list)
    unauthenticated_500: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    endings: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.mlflow_offset = self.target.mlflow_log.stat().st_size
        self.jupyter_offset = self.target.jupyter_log.stat().st_size
        self.rss_before = jupyter_rss(self.target)

    def violations(self) -> list[str]:
        found = []
        if self.victims_wrong:
            found.append(f"{len(self.victims_wrong)} victims got another request's answer, first after: {self.victims_wrong[0]}")
        if self.unauthenticated_500:
            found.append(f"{len(self.unauthenticated_500)} unauthenticated requests answered 500, first: {self.unauthenticated_500[0]}")
        mlflow_log = self.target.mlflow_log_after(self.mlflow_offset, f"end-{uuid.uuid4().hex}")
        sign = DESYNC_SIGNS.search(mlflow_log)
        if sign:
            line = mlflow_log[mlflow_log.rfind("\n", 0, sign.start()) + 1 : mlflow_log.find("\n", sign.end())]
            found.append(f"MLflow read bytes no request of the relay's carried: {line[:300]!r}")
        secret = secret_pattern(self.target.token)
        for name, text in (("mlflow.log", mlflow_log), ("jupyter.log", self.jupyter_log())):
            if secret.search(text):
                found.append(f"the token is in {name}")
        growth = jupyter_rss(self.target) - self.rss_before
        if growth > 64 << 20:
            found.append(f"Jupyter's memory grew by {growth >> 20} MB")
        return found

    def jupyter_log(self) -> str:
        with open(self.target.jupyter_log, "rb") as log:
            log.seek(self.jupyter_offset)
            return log.read().decode(errors="replace")

    def summary(self) -> dict:
        return {
            "cases": self.cases,
            "seconds": round(time.monotonic() - self.started, 1),
            "statuses": dict(sorted(self.statuses.items())),
            "endings": dict(sorted(self.endings.items())),
            "jupyter_rss_growth_mb": round((jupyter_rss(self.target) - self.rss_before) / (1 << 20), 1),
        }


def jupyter_rss(target: Target) -> int:
    status = Path(f"/proc/{target.stack.pid('jupyter')}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) * 1024


# --- the generator -------------------------------------------------------------------------------
def usually(common: list, odd: list) -> st.SearchStrategy:
    """Mostly what real clients send, sometimes a variant: a request must be nearly right to get
    through tornado and the route's checks to the relay, where framing matters."""
    return st.one_of(st.sampled_from(common), st.sampled_from(common), st.sampled_from(common), st.sampled_from(odd))


def _smuggled(port: int) -> st.SearchStrategy[bytes]:
    """Requests hidden in a body: a plain GET, and a PUT whose long body would swallow the next
    client's request into an artifact (the attack #21 saw succeed)."""
    return st.sampled_from([
        f"GET /api/2.0/mlflow/experiments/get-by-name?experiment_name={SMUGGLED} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        f"PUT /api/2.0/mlflow-artifacts/artifacts/{SMUGGLED}/cap.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200\r\n\r\n".encode(),
        f"GET /{SMUGGLED} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        f"X\r\n\r\nGET /{SMUGGLED} HTTP/1.1\r\n\r\n".encode(),
    ])  # fmt: skip


def _body(port: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.just(b"X"),
        st.just(json.dumps({"name": f"fuzz-{uuid.uuid4().hex[:6]}"}).encode()),
        _smuggled(port),
        st.binary(max_size=300),
    )


def _chunked(body: bytes, draw) -> bytes:
    """The body chunked: correctly, or with one of the ways chunked framing is broken or bent."""
    form = draw(usually(["ok", "split"], ["extension", "trailer", "bad-size", "no-crlf", "short", "no-last", "upper-hex", "lf-only"]))
    size = b"%x" % len(body)
    if form == "split" and len(body) > 1:
        half = len(body) // 2
        return b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    if form == "extension":
        return size + b";a=b\r\n" + body + b"\r\n0;x\r\n\r\n"
    if form == "trailer":
        return size + b"\r\n" + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    if form == "bad-size":
        return b"0x" + size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if form == "no-crlf":
        return size + b"\r\n" + body + b"0\r\n\r\n"
    if form == "short":
        return b"%x\r\n" % (len(body) + 5) + body + b"\r\n0\r\n\r\n"
    if form == "no-last":
        return size + b"\r\n" + body + b"\r\n"
    if form == "upper-hex":
        return size.upper() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if form == "lf-only":
        return size + b"\n" + body + b"\n0\n\n"
    return (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n"


LENGTH_NAMES = usually(["Content-Length"], ["content-length", "CONTENT-LENGTH", "Content-Length ", "Content_Length", " Content-Length"])
CODING_NAMES = usually(["Transfer-Encoding"], ["transfer-encoding", "Transfer-Encoding ", "Transfer_Encoding", "Transfer-Encoding\t"])
CODINGS = usually(["chunked"], ["Chunked", " chunked", "chunked ", "chunked, identity", "identity, chunked", "gzip", "xchunked", "chunked\t", ",chunked", "identity"])


@st.composite
def messages(draw, target: Target, cookie: str) -> tuple[bytes, bool, bool]:
    """One request: its bytes, whether it carries a valid credential, whether it is a HEAD."""
    token, port, mlflow_port = target.token, target.stack.jupyter_port, target.stack.mlflow_port
    method = draw(usually(METHODS, ODD_METHODS))
    route = draw(usually(["/mlflow/", f"/proxy/{mlflow_port}/"], [f"/proxy/0{mlflow_port}/", f"/proxy/localhost:{mlflow_port}/"]))
    path = route + draw(st.sampled_from(ENDPOINTS))
    headers: list[tuple[str, str]] = [("Host", draw(usually([f"127.0.0.1:{port}"], ["localhost", "evil.example"])))]
    credential = draw(usually(["header", "bearer", "query", "cookie"], ["none", "query-encoded", "wrong"]))
    valid = credential not in ("none", "wrong")
    joiner = "&" if "?" in path else "?"
    if credential == "header":
        headers.append(("Authorization", f"token {token}"))
    elif credential == "bearer":
        headers.append(("Authorization", f"Bearer {token}"))
    elif credential == "query":
        path += f"{joiner}token={token}"
    elif credential == "query-encoded":
        path += f"{joiner}%74oken={token}"
    elif credential == "cookie":
        headers.append(("Cookie", cookie))
    elif credential == "wrong":
        headers.append(("Authorization", "token 0000"))
    if valid and draw(st.integers(0, 5)) == 0:  # the token somewhere else too
        place = draw(st.sampled_from(["path", "bare-query", "header", "cookie", "percent-query"]))
        if place == "path":
            path = route + f"health%3Ftoken={token}"
        elif place == "bare-query":
            path += ("&" if "?" in path else "?") + token
        elif place == "header":
            headers.append(("X-Note", token))
        elif place == "cookie":
            headers.append(("Cookie", f"a={token}"))
        else:
            path += ("&" if "?" in path else "?") + "x=" + "".join(f"%{ord(c):02x}" for c in token)
    body = draw(_body(port))
    framing = draw(usually(["length", "chunked", "none"], ["both", "two-lengths", "odd-length", "wrong-length", "two-codings"]))
    if framing == "length":
        headers.append((draw(LENGTH_NAMES), str(len(body))))
    elif framing == "chunked":
        headers.append((draw(CODING_NAMES), draw(CODINGS)))
        body = _chunked(body, draw)
    elif framing == "none":
        pass  # any body is bytes after the request: tornado reads them as the next request
    elif framing == "both":
        pair = [("Content-Length", str(len(body))), ("Transfer-Encoding", draw(CODINGS))]
        headers += draw(st.permutations(pair))
        if draw(st.booleans()):
            body = _chunked(body, draw)
    elif framing == "two-lengths":
        headers += [("Content-Length", str(len(body))), ("Content-Length", draw(st.sampled_from([str(len(body)), str(len(body) + 1), "0"])))]
    elif framing == "odd-length":
        headers.append(("Content-Length", draw(st.sampled_from([f"+{len(body)}", f"0x{len(body):x}", f"{len(body)},{len(body)}", f"{len(body)}, {len(body)}", f" {len(body)}", "\u0665", "-1", "99999999999999999999", f"{len(body)}\x0b"]))))
    elif framing == "wrong-length":
        headers.append(("Content-Length", str(max(0, len(body) + draw(st.sampled_from([-3, -1, 1, 5]))))))
    elif framing == "two-codings":
        headers += [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", draw(st.sampled_from(["chunked", "identity", "gzip"])))]
        body = _chunked(body, draw)
    for name, values in (("Expect", ["100-continue", "100-Continue"]), ("Upgrade", ["websocket", "h2c", "WebSocket"]), ("Connection", ["close", "keep-alive", "Upgrade", "Upgrade, HTTP2-Settings"])):
        if draw(st.integers(0, 4)) == 0:
            headers.append((name, draw(st.sampled_from(values))))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("X-Folded", "a\r\n b"))  # obs-fold
    if draw(st.integers(0, 4)) == 0:
        headers.append(("Origin", draw(st.sampled_from([f"http://127.0.0.1:{port}", "http://127.0.0.1:9999", "null"]))))
    if credential != "cookie" and draw(st.integers(0, 4)) == 0:
        headers.append(("Content-Type", "application/json"))
    version = draw(usually(["HTTP/1.1"], ["HTTP/1.0"]))
    return request(method, path, draw(st.permutations(headers)), body, version), valid, method == "HEAD"


@st.composite
def cases(draw, target: Target, cookie: str) -> Case:
    count = draw(st.integers(1, 3))
    drawn = [draw(messages(target, cookie)) for _ in range(count)]
    heads = 0
    for _, _, head in drawn:
        if not head:
            break
        heads += 1
    return Case(
        messages=[message for message, _, _ in drawn],
        credentials=[valid for _, valid, _ in drawn],
        heads=heads,
        ending=draw(usually(*ENDINGS)),
        cut=draw(st.floats(0.1, 0.9)),
    )


def login_cookie(target: Target) -> str:
    """Jupyter's login cookie for this stack (name=value), as a browser holds it after the token URL."""
    answer = target.raw("GET", f"/mlflow/api/2.0/mlflow/experiments/search?max_results=1&token={target.token}",
                        {"Host": f"127.0.0.1:{target.stack.jupyter_port}"})
    for part in answer.headers.get("set-cookie", "").split(", "):
        if part.startswith("username-"):
            return part.split(";")[0]
    raise AssertionError(f"no login cookie in {answer.headers}")


# --- one case, and the victim after it --------------------------------------------------------------
def run_case(run: Run, case: Case, read_timeout: float = 1.0) -> list[str]:
    """Runs one case and its victim; returns what this case showed wrong (also kept in `run`)."""
    problems = []
    run.cases += 1
    run.endings[case.ending] += 1
    connection = RawConnection(run.target.stack.jupyter_port, timeout=10)
    try:
        data = case.data
        if case.ending == "cut-request":
            connection.send(data[: max(1, int(len(data) * case.cut))])
            connection.close()
        else:
            connection.send(data)
            if case.ending == "close":
                connection.close()
            elif case.ending == "reset":
                connection.reset()
            elif case.ending == "leave-mid-response":
                connection.socket.settimeout(read_timeout)
                try:
                    connection.socket.recv(10)
                except (TimeoutError, OSError):
                    pass
                connection.reset()
            else:
                answers = connection.read_responses(len(case.messages), read_timeout, head_requests=case.heads)
                for answer, authenticated in zip(answers, case.credentials, strict=False):
                    run.statuses[answer.status] += 1
                    if answer.status == 500 and not authenticated:
                        problems.append("an unauthenticated request was answered 500")
                        run.unauthenticated_500.append(repr(case.data[:400]))
                connection.close()
    except OSError:
        connection.close()  # the server hung up while we wrote: an ending of its own
    if not run.target.victim_is_answered_right():
        problems.append("the next client got another request's answer")
        run.victims_wrong.append(repr(case.data[:400]))
    return problems
