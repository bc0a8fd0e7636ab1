"""Team mode's attribution (mlproxy_supervisor/hub/attribution.py) on a real MLflow: uvicorn started
with the launcher's environment, on a unix socket, over a fresh SQLite store.

Most tests talk to MLflow's app with only the middlewares added (tests/support/attribution_app.py),
so that what they see is the middlewares' doing; the last ones run MLflow as team mode runs it
(MLflow's auth app naming the caller from the header, hub/identity.py) with MLflow's own client.
The Hub service is what sets X-MLproxy-User; here the test sets it, as the service would for
alice. Every forged maker ("bob") is read back through MLflow's own REST API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import pytest

from mlproxy_supervisor import launch
from mlproxy_supervisor.config import Settings
from mlproxy_supervisor.hub import caller, identity, mlflow_auth
from tests.stack import ROOT
from tests.support.direct import DirectMLflow, forward

pytestmark = pytest.mark.integration

# The key of the service's proof (hub/caller.py), MLflow's Flask secret in team mode: the same for
# both servers here, as the Hub service and MLflow share it.
SECRET = "attribution-test-secret-0123456789"
ALICE = caller.headers("alice", False, SECRET)
BOB = caller.headers("bob", False, SECRET)
START_TIMEOUT = 90  # seconds; MLflow imports and creates its tables in about 10 on 2 cores
TEAM = {"hub_api_url": "http://127.0.0.1:8081/hub/api", "public_url": "http://hub.example:8000"}


@contextmanager
def serve(settings: Settings, app: str, env: dict[str, str] | None = None):
    """MLflow under uvicorn with the environment the launcher gives it for these settings, on the
    settings' unix socket; yields a client on that socket."""
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    socket_path = settings.mlflow_socket
    argv = [sys.executable, "-m", "uvicorn", "--uds", str(socket_path), "--log-level", "warning", app]
    log_path = settings.state_dir / "mlflow.log"
    with open(log_path, "wb") as log:
        environment = {**os.environ, **launch.mlflow_command(settings)[1], identity.SECRET_ENV: SECRET, **(env or {})}
        server = subprocess.Popen(argv, cwd=ROOT, env=environment,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    client = DirectMLflow(socket_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (socket_path.exists() and _answers(client)):
            assert server.poll() is None, f"MLflow exited {server.returncode}: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"MLflow did not answer in {START_TIMEOUT} s: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(client: DirectMLflow) -> bool:
    try:
        return client.get("/health").ok
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    """MLflow's app and the middlewares, nothing else."""
    with serve(Settings(state_dir=tmp_path_factory.mktemp("attribution") / "state"), "tests.support.attribution_app:app") as client:
        yield client


@pytest.fixture(scope="module")
def team_mlflow(tmp_path_factory):
    """MLflow as team mode runs it (mlflow_app.py with the launcher's team environment): MLflow's auth
    app, which names the caller from the header, and the middlewares installed by mlflow_app.py."""
    settings = Settings(state_dir=tmp_path_factory.mktemp("team") / "state", team=TEAM)
    settings.state_dir.mkdir(parents=True)
    mlflow_auth.ensure_secrets(settings)
    mlflow_auth.write_config(settings)
    with serve(settings, "mlproxy_supervisor.mlflow_app:app") as client:
        yield client


@pytest.fixture(scope="module")
def experiment_id(mlflow) -> str:
    answer = mlflow.post("/api/2.0/mlflow/experiments/create", json={"name": "attribution"}, headers=ALICE)
    answer.raise_for_status()
    return answer.json()["experiment_id"]


def call(mlflow: DirectMLflow, method: str, path: str, body=None, headers=ALICE, raw: bytes | None = None):
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    return mlflow.request(method, path, data=raw, headers={"Content-Type": "application/json", **(headers or {})})


def ok(answer) -> dict:
    answer.raise_for_status()
    return answer.json()


def assert_refused(answer, *words: str) -> None:
    assert answer.status_code == 403, answer.content
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert error["error_code"] == "PERMISSION_DENIED"
    for word in ("mlflow.user", *words):
        assert word in error["message"]


# --- Runs ---------------------------------------------------------------------------------------


def get_run(mlflow, run_id: str) -> tuple[str, dict[str, str]]:
    run = ok(mlflow.get("/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=ALICE))["run"]
    return run["info"]["user_id"], {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


@pytest.mark.parametrize("prefix", ["/api", "/ajax-api"])
def test_a_run_created_by_alice_is_hers_whatever_the_client_says(mlflow, experiment_id, prefix):
    forged = {"experiment_id": experiment_id, "user_id": "bob", "tags": [{"key": "mlflow.user", "value": "bob"}]}
    run_id = ok(call(mlflow, "POST", f"{prefix}/2.0/mlflow/runs/create", forged))["run"]["info"]["run_id"]
    user_id, tags = get_run(mlflow, run_id)
    assert user_id == tags["mlflow.user"] == "alice"
    assert "bob" not in tags.values()


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"userId": "bob"}, id="json-name"),
        pytest.param({"user_id": "bob", "tags": {"key": "mlflow.user"}}, id="malformed-tags"),
        pytest.param({"tags": [{"key": "MLflow.User ", "value": "bob"}]}, id="key-spelling"),
        pytest.param({"tags": [{"key": "mlflow.user", "value": "bob"}, 5]}, id="partly-parsed-tags"),
        pytest.param({}, id="nothing-said"),
    ],
)
def test_no_spelling_of_a_run_maker_gets_past(mlflow, experiment_id, forged):
    """MLflow keeps what it parsed before an error, so even a malformed body must not carry bob."""
    run = ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id, **forged}))["run"]
    user_id, tags = get_run(mlflow, run["info"]["run_id"])
    assert user_id == "alice"
    assert "bob" not in tags.values()
    assert tags.get("mlflow.user", "alice") == "alice"


def test_a_double_encoded_body_is_read_as_mlflow_reads_it(mlflow, experiment_id):
    """Older clients send the JSON object as a JSON string; MLflow decodes it twice."""
    body = json.dumps(json.dumps({"experiment_id": experiment_id, "user_id": "bob"})).encode()
    run = ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", raw=body))["run"]
    assert get_run(mlflow, run["info"]["run_id"])[0] == "alice"


def test_the_name_stamped_is_the_name_mlflows_auth_app_is_told(mlflow, experiment_id):
    """The Hub service sends the name percent-encoded (any Hub name, even beyond latin-1); the name
    stamped is the one hub/identity.py gives MLflow's auth app."""
    body = {"experiment_id": experiment_id, "user_id": "bob"}
    run = ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", body, headers=caller.headers("zoë", False, SECRET)))["run"]
    assert get_run(mlflow, run["info"]["run_id"])[0] == "zoë"


@pytest.mark.parametrize("forged", [{"X-MLproxy-User": "alice"}, {**BOB, "X-MLproxy-User": "alice"}, {"X_MLproxy_User": "alice", **BOB}])
def test_a_name_without_the_services_proof_names_no_one(mlflow, experiment_id, forged):
    """Without the proof, with bob's proof under another name, or folded into bob's header by the
    server (Starlette joins X_MLproxy_User and X-MLproxy-User): nothing is stamped."""
    body = {"experiment_id": experiment_id, "user_id": "bob"}
    run = ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", body, headers=forged))["run"]
    assert get_run(mlflow, run["info"]["run_id"])[0] != "alice"


def test_without_the_header_nothing_is_touched(mlflow, experiment_id):
    forged = {"experiment_id": experiment_id, "user_id": "bob", "tags": [{"key": "mlflow.user", "value": "bob"}]}
    run_id = ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", forged, headers=None))["run"]["info"]["run_id"]
    assert get_run(mlflow, run_id)[0] == "bob"
    ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "mlflow.user", "value": "carol"}, headers=None))
    assert get_run(mlflow, run_id)[1]["mlflow.user"] == "carol"


@pytest.fixture
def alice_run(mlflow, experiment_id) -> str:
    return ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id}))["run"]["info"]["run_id"]


def test_a_promptlab_run_is_alices(mlflow, experiment_id):
    body = {
        "experiment_id": experiment_id, "user_id": "bob", "prompt_template": "Say {{word}}",
        "prompt_parameters": [{"key": "word", "value": "hi"}], "model_route": "chat", "model_input": "Say hi",
        "model_output": "hi", "mlflow_version": "3.17.2",
    }  # fmt: skip
    run = ok(call(mlflow, "POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run", body))["run"]
    assert get_run(mlflow, run["info"]["run_id"])[0] == "alice"


@pytest.mark.parametrize("key", ["mlflow.user", "MLFLOW.USER", " mlflow.user"])
@pytest.mark.parametrize("prefix", ["/api", "/ajax-api"])
def test_changing_a_runs_maker_is_refused(mlflow, alice_run, prefix, key):
    before = get_run(mlflow, alice_run)
    assert_refused(call(mlflow, "POST", f"{prefix}/2.0/mlflow/runs/set-tag", {"run_id": alice_run, "key": key, "value": "bob"}), "run")
    assert_refused(call(mlflow, "POST", f"{prefix}/2.0/mlflow/runs/delete-tag", {"run_id": alice_run, "key": key}), "run")
    batch = {"run_id": alice_run, "metrics": [{"key": "loss", "value": 1, "timestamp": 0}], "tags": [{"key": key, "value": "bob"}]}
    assert_refused(call(mlflow, "POST", f"{prefix}/2.0/mlflow/runs/log-batch", batch), "run")
    assert get_run(mlflow, alice_run) == before
    run = ok(mlflow.get("/api/2.0/mlflow/runs/get", params={"run_id": alice_run}, headers=ALICE))["run"]
    assert "metrics" not in run["data"], "a refused batch logs nothing"


def test_other_run_tags_are_alices_to_change(mlflow, alice_run):
    ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": alice_run, "key": "team", "value": "a"}))
    ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": alice_run, "tags": [{"key": "team", "value": "b"}]}))
    assert get_run(mlflow, alice_run)[1]["team"] == "b"
    ok(call(mlflow, "POST", "/api/2.0/mlflow/runs/delete-tag", {"run_id": alice_run, "key": "team"}))
    assert "team" not in get_run(mlflow, alice_run)[1]


def test_a_body_mlflow_cannot_read_is_passed_as_is(mlflow):
    """Not JSON: MLflow reads it as empty and answers the same with or without the header."""
    for body in (b"user_id=bob", b"[1, 2]", b'"not an object"'):
        with_header = call(mlflow, "POST", "/api/2.0/mlflow/runs/create", raw=body)
        without = call(mlflow, "POST", "/api/2.0/mlflow/runs/create", raw=body, headers=None)
        assert with_header.status_code == without.status_code >= 400
        assert with_header.headers["content-type"] == without.headers["content-type"]


def test_a_body_over_the_limit_is_refused_not_passed(mlflow, experiment_id):
    from mlproxy_supervisor.hub.attribution import BODY_LIMIT

    padded = json.dumps({"experiment_id": experiment_id, "user_id": "bob", "pad": "x" * BODY_LIMIT}).encode()
    answer = call(mlflow, "POST", "/api/2.0/mlflow/runs/create", raw=padded)
    assert answer.status_code == 413
    assert answer.json()["error_code"] == "RESOURCE_EXHAUSTED"
    assert "MiB" in answer.json()["message"]


# --- Logged models ------------------------------------------------------------------------------


def model_tags(mlflow, model_id: str) -> dict[str, str]:
    model = ok(mlflow.get(f"/api/2.0/mlflow/logged-models/{model_id}", headers=ALICE))["model"]
    return {tag["key"]: tag["value"] for tag in model["info"].get("tags", [])}


@pytest.mark.parametrize("tags", [[{"key": "mlflow.user", "value": "bob"}], [], None])
def test_a_logged_model_is_alices(mlflow, experiment_id, tags):
    body = {"experiment_id": experiment_id, "name": "model", **({"tags": tags} if tags is not None else {})}
    model_id = ok(call(mlflow, "POST", "/api/2.0/mlflow/logged-models", body))["model"]["info"]["model_id"]
    assert model_tags(mlflow, model_id)["mlflow.user"] == "alice"


def test_changing_a_logged_models_maker_is_refused(mlflow, experiment_id):
    model_id = ok(call(mlflow, "POST", "/ajax-api/2.0/mlflow/logged-models", {"experiment_id": experiment_id}))["model"]["info"]["model_id"]
    before = model_tags(mlflow, model_id)
    tags = {"tags": [{"key": "stage", "value": "dev"}, {"key": "mlflow.user", "value": "bob"}]}
    assert_refused(call(mlflow, "PATCH", f"/api/2.0/mlflow/logged-models/{model_id}/tags", tags), "logged-model")
    for spelling in ("mlflow.user", "mlflow%2Euser", "MLflow.User"):
        assert_refused(call(mlflow, "DELETE", f"/ajax-api/2.0/mlflow/logged-models/{model_id}/tags/{spelling}"), "logged-model")
    assert model_tags(mlflow, model_id) == before
    ok(call(mlflow, "PATCH", f"/api/2.0/mlflow/logged-models/{model_id}/tags", {"tags": [{"key": "stage", "value": "dev"}]}))
    assert model_tags(mlflow, model_id) == {**before, "stage": "dev"}


# --- Traces -------------------------------------------------------------------------------------


def start_trace_v3(mlflow, experiment_id: str, trace_id: str, metadata: dict, tags: dict, headers=ALICE):
    """The body the MLflow client's RestStore.start_trace sends."""
    from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState
    from mlflow.protos.service_pb2 import StartTraceV3
    from mlflow.utils.proto_json_utils import message_to_json

    info = TraceInfo(
        trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment_id), request_time=int(time.time() * 1000),
        state=TraceState.OK, trace_metadata=metadata, tags=tags,
    )  # fmt: skip
    body = message_to_json(StartTraceV3(trace=Trace(info=info, data=TraceData(spans=[])).to_proto()))
    return call(mlflow, "POST", "/api/3.0/mlflow/traces", raw=body.encode(), headers=headers)


def trace_v3(mlflow, trace_id: str) -> tuple[dict, dict]:
    info = ok(mlflow.get(f"/api/3.0/mlflow/traces/{trace_id}", headers=ALICE))["trace"]["trace_info"]
    return info.get("trace_metadata", {}), info.get("tags", {})


def new_trace_id() -> str:
    return "tr-" + uuid.uuid4().hex


def test_a_trace_is_alices_and_stays_hers(mlflow, experiment_id):
    trace_id = new_trace_id()
    ok(start_trace_v3(mlflow, experiment_id, trace_id, {"mlflow.user": "bob", "mlflow.trace.user": "customer-7"}, {"mlflow.user": "bob"}))
    metadata, tags = trace_v3(mlflow, trace_id)
    assert (metadata["mlflow.user"], tags["mlflow.user"]) == ("alice", "alice")
    assert metadata["mlflow.trace.user"] == "customer-7", "the traced app's own end user is the app's business"

    # Starting it again merges into it: alice may (a retried export), bob may not.
    ok(start_trace_v3(mlflow, experiment_id, trace_id, {}, {}))
    refused = start_trace_v3(mlflow, experiment_id, trace_id, {}, {}, headers=BOB)
    assert_refused(refused, "another user recorded")
    assert "alice" not in refused.json()["message"], "bob may not read alice's trace: do not tell him whose it is"
    # Nor into his own experiment, where the merge would move it.
    bobs = ok(mlflow.post("/api/2.0/mlflow/experiments/create", json={"name": f"bob-{uuid.uuid4().hex}"}, headers=BOB))["experiment_id"]
    assert_refused(start_trace_v3(mlflow, bobs, trace_id, {}, {}, headers=BOB), "another user recorded")
    info = ok(mlflow.get(f"/api/3.0/mlflow/traces/{trace_id}", headers=ALICE))["trace"]["trace_info"]
    assert info["trace_location"]["mlflow_experiment"]["experiment_id"] == experiment_id
    assert info["trace_metadata"]["mlflow.user"] == "alice"


@pytest.mark.parametrize("version, id_field", [("2.0", "request_id"), ("3.0", "trace_id")])
@pytest.mark.parametrize("key", ["mlflow.user", "Mlflow.User"])
def test_changing_a_traces_maker_is_refused(mlflow, experiment_id, version, id_field, key):
    trace_id = new_trace_id()
    ok(start_trace_v3(mlflow, experiment_id, trace_id, {}, {}))
    before = trace_v3(mlflow, trace_id)
    path = f"/api/{version}/mlflow/traces/{trace_id}/tags"
    assert_refused(call(mlflow, "PATCH", path, {id_field: trace_id, "key": key, "value": "bob"}), "trace")
    assert_refused(call(mlflow, "DELETE", path, {id_field: trace_id, "key": key}), "trace")
    assert trace_v3(mlflow, trace_id) == before
    ok(call(mlflow, "PATCH", path, {id_field: trace_id, "key": "reviewed", "value": "yes"}))
    assert trace_v3(mlflow, trace_id)[1]["reviewed"] == "yes"


def test_a_v2_trace_is_alices_and_only_she_may_end_it_as_hers(mlflow, experiment_id):
    entries = [{"key": "mlflow.user", "value": "bob"}]
    body = {"experiment_id": experiment_id, "timestamp_ms": 1, "request_metadata": entries, "tags": entries}
    request_id = ok(call(mlflow, "POST", "/api/2.0/mlflow/traces", body))["trace_info"]["request_id"]
    metadata, tags = trace_v3(mlflow, request_id)
    assert (metadata["mlflow.user"], tags["mlflow.user"]) == ("alice", "alice")

    # An old client sends its own (OS) user name again when it ends the trace.
    end = {"timestamp_ms": 2, "status": "OK", "request_metadata": [{"key": "mlflow.user", "value": "jovyan"}]}
    assert_refused(call(mlflow, "PATCH", f"/api/2.0/mlflow/traces/{request_id}", end, headers=BOB), "another user recorded")
    ok(call(mlflow, "PATCH", f"/api/2.0/mlflow/traces/{request_id}", end))
    assert trace_v3(mlflow, request_id)[0]["mlflow.user"] == "alice"


def otlp_export(trace_id: bytes, attributes: dict[str, str], resource: dict[str, str] | None = None):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def key_values(pairs):
        return [KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in pairs.items()]

    now = time.time_ns()
    span = Span(trace_id=trace_id, span_id=os.urandom(8), name="root", start_time_unix_nano=now, end_time_unix_nano=now + 1000,
                attributes=key_values(attributes))  # fmt: skip
    resource_spans = ResourceSpans(resource=Resource(attributes=key_values(resource or {})), scope_spans=[ScopeSpans(spans=[span])])
    return ExportTraceServiceRequest(resource_spans=[resource_spans])


def send_otlp(mlflow, experiment_id, export, encoding: str = "protobuf"):
    import gzip

    from google.protobuf.json_format import MessageToJson

    headers = {**ALICE, "X-Mlflow-Experiment-Id": experiment_id}
    if encoding == "protobuf":
        body, headers["Content-Type"] = export.SerializeToString(), "application/x-protobuf"
    else:  # OTLP JSON spells ids in hex, and here it travels gzipped
        message = json.loads(MessageToJson(export))
        for resource_spans in message["resourceSpans"]:
            for span in resource_spans["scopeSpans"][0]["spans"]:
                span["traceId"] = export.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
                span["spanId"] = export.resource_spans[0].scope_spans[0].spans[0].span_id.hex()
        body = gzip.compress(json.dumps(message).encode())
        headers["Content-Type"], headers["Content-Encoding"] = "application/json", "gzip"
    return mlflow.request("POST", "/v1/traces", data=body, headers=headers)


@pytest.mark.parametrize("encoding", ["protobuf", "json-gzip"])
def test_spans_cannot_name_a_traces_maker(mlflow, experiment_id, encoding):
    otel_id = os.urandom(16)
    trace_id = "tr-" + otel_id.hex()
    answer = send_otlp(mlflow, experiment_id, otlp_export(otel_id, {"mlflow.traceTag.mlflow.user": "bob"}), encoding)
    assert_refused(answer, "span attribute")
    assert mlflow.get(f"/api/3.0/mlflow/traces/{trace_id}", headers=ALICE).status_code == 404
    answer = send_otlp(mlflow, experiment_id, otlp_export(otel_id, {}, resource={"MLflow.User": "bob"}), encoding)
    assert_refused(answer)

    assert send_otlp(mlflow, experiment_id, otlp_export(otel_id, {"mlflow.traceTag.team": "a"}), encoding).ok
    assert trace_v3(mlflow, trace_id)[1]["team"] == "a"
    # The client's trace info follows its spans: the trace becomes alice's.
    ok(start_trace_v3(mlflow, experiment_id, trace_id, {"mlflow.user": "jovyan"}, {}))
    assert trace_v3(mlflow, trace_id)[0]["mlflow.user"] == "alice"


# --- Evaluation datasets ------------------------------------------------------------------------


def get_dataset(mlflow, dataset_id: str) -> dict:
    return ok(mlflow.get(f"/api/3.0/mlflow/datasets/{dataset_id}", headers=ALICE))["dataset"]


def dataset_records(mlflow, dataset_id: str) -> list[dict]:
    return json.loads(ok(mlflow.get(f"/api/3.0/mlflow/datasets/{dataset_id}/records", headers=ALICE))["records"])


@pytest.mark.parametrize("tags", [{"mlflow.user": "bob", "team": "a"}, {}, None])
def test_a_dataset_and_its_records_are_alices(mlflow, experiment_id, tags):
    body = {"name": f"set-{uuid.uuid4().hex}", "experiment_ids": [experiment_id], "created_by": "bob",
            **({"tags": json.dumps(tags)} if tags is not None else {})}  # fmt: skip
    dataset = ok(call(mlflow, "POST", "/api/3.0/mlflow/datasets/create", body))["dataset"]
    stored = get_dataset(mlflow, dataset["dataset_id"])
    assert stored["created_by"] == stored["last_updated_by"] == "alice"
    assert json.loads(stored["tags"])["mlflow.user"] == "alice"

    records = [{"inputs": {"q": "1"}, "tags": {"mlflow.user": "bob"}}, {"inputs": {"q": "2"}}, {"inputs": {"q": "3"}, "tags": None}]
    path = f"/ajax-api/3.0/mlflow/datasets/{dataset['dataset_id']}/records"
    ok(call(mlflow, "POST", path, {"records": json.dumps(records), "updated_by": "bob"}))
    assert {record["created_by"] for record in dataset_records(mlflow, dataset["dataset_id"])} == {"alice"}
    assert get_dataset(mlflow, dataset["dataset_id"])["last_updated_by"] == "alice"


def test_changing_a_datasets_maker_is_refused(mlflow, experiment_id):
    dataset_id = ok(call(mlflow, "POST", "/api/3.0/mlflow/datasets/create", {"name": f"set-{uuid.uuid4().hex}"}))["dataset"]["dataset_id"]
    before = get_dataset(mlflow, dataset_id)
    tags = {"tags": json.dumps({"team": "a", "mlflow.user": "bob"})}
    assert_refused(call(mlflow, "PATCH", f"/api/3.0/mlflow/datasets/{dataset_id}/tags", tags), "dataset")
    assert_refused(call(mlflow, "DELETE", f"/api/3.0/mlflow/datasets/{dataset_id}/tags/mlflow.user"), "dataset")
    assert get_dataset(mlflow, dataset_id) == before
    ok(call(mlflow, "PATCH", f"/api/3.0/mlflow/datasets/{dataset_id}/tags", {"tags": json.dumps({"team": "a"})}))
    assert json.loads(get_dataset(mlflow, dataset_id)["tags"]) == {"mlflow.user": "alice", "team": "a"}


# --- Issues and the AI gateway ------------------------------------------------------------------


def test_an_issue_is_alices(mlflow, experiment_id):
    body = {"experiment_id": experiment_id, "name": "slow", "description": "answers are slow", "created_by": "bob"}
    issue = ok(call(mlflow, "POST", "/api/3.0/mlflow/issues", body))["issue"]
    assert ok(mlflow.get(f"/api/3.0/mlflow/issues/{issue['issue_id']}", headers=ALICE))["issue"]["created_by"] == "alice"


def test_gateway_objects_are_made_and_changed_by_alice(mlflow):
    gateway = "/api/3.0/mlflow/gateway"

    def get(what: str, **params) -> dict:
        return ok(mlflow.get(f"{gateway}/{what}/get", params=params, headers=ALICE))

    secret = ok(call(mlflow, "POST", f"{gateway}/secrets/create", {
        "secret_name": f"key-{uuid.uuid4().hex[:8]}", "secret_value": {"api_key": "sk-test"}, "provider": "openai", "createdBy": "bob",
    }))["secret"]  # fmt: skip
    ok(call(mlflow, "POST", f"{gateway}/secrets/update", {"secret_id": secret["secret_id"], "secret_value": {"api_key": "sk-2"}, "updated_by": "bob"}))
    stored = get("secrets", secret_id=secret["secret_id"])["secret"]
    assert (stored["created_by"], stored["last_updated_by"]) == ("alice", "alice")

    definition = ok(call(mlflow, "POST", f"{gateway}/model-definitions/create", {
        "name": f"gpt-{uuid.uuid4().hex[:8]}", "secret_id": secret["secret_id"], "provider": "openai", "model_name": "gpt-4o", "created_by": "bob",
    }))["model_definition"]  # fmt: skip
    ok(call(mlflow, "POST", f"{gateway}/model-definitions/update", {"model_definition_id": definition["model_definition_id"], "model_name": "gpt-4o-mini", "updated_by": "bob"}))
    stored = get("model-definitions", model_definition_id=definition["model_definition_id"])["model_definition"]
    assert (stored["created_by"], stored["last_updated_by"]) == ("alice", "alice")

    config = {"model_definition_id": definition["model_definition_id"], "linkage_type": "PRIMARY", "weight": 1}
    endpoint = ok(call(mlflow, "POST", f"{gateway}/endpoints/create", {"name": f"chat-{uuid.uuid4().hex[:8]}", "model_configs": [config], "created_by": "bob"}))["endpoint"]
    ok(call(mlflow, "POST", f"{gateway}/endpoints/update", {"endpoint_id": endpoint["endpoint_id"], "name": f"chat-{uuid.uuid4().hex[:8]}", "updated_by": "bob"}))
    stored = get("endpoints", endpoint_id=endpoint["endpoint_id"])["endpoint"]
    assert (stored["created_by"], stored["last_updated_by"]) == ("alice", "alice")

    fallback = ok(call(mlflow, "POST", f"{gateway}/model-definitions/create", {
        "name": f"gpt-{uuid.uuid4().hex[:8]}", "secret_id": secret["secret_id"], "provider": "openai", "model_name": "gpt-4.1",
    }))["model_definition"]  # fmt: skip
    attach = {"endpoint_id": endpoint["endpoint_id"], "created_by": "bob",
              "model_config": {"model_definition_id": fallback["model_definition_id"], "linkage_type": "FALLBACK", "fallback_order": 1}}  # fmt: skip
    assert ok(call(mlflow, "POST", f"{gateway}/endpoints/models/attach", attach))["mapping"]["created_by"] == "alice"
    mappings = get("endpoints", endpoint_id=endpoint["endpoint_id"])["endpoint"]["model_mappings"]
    assert {mapping["created_by"] for mapping in mappings} == {"alice"}

    binding = {"endpoint_id": endpoint["endpoint_id"], "resource_type": "scorer", "resource_id": "s-1", "created_by": "bob"}
    ok(call(mlflow, "POST", f"{gateway}/endpoints/bindings/create", binding))
    listed = ok(mlflow.get(f"{gateway}/endpoints/bindings/list", params={"endpoint_id": endpoint["endpoint_id"]}, headers=ALICE))
    assert [binding["created_by"] for binding in listed["bindings"]] == ["alice"]

    policy = ok(call(mlflow, "POST", f"{gateway}/budgets/create", {
        "budget_unit": "USD", "budget_amount": 10, "duration": {"unit": "DAYS", "value": 1}, "target_scope": "GLOBAL",
        "budget_action": "ALERT", "created_by": "bob",
    }))["budget_policy"]  # fmt: skip
    ok(call(mlflow, "POST", f"{gateway}/budgets/update", {"budget_policy_id": policy["budget_policy_id"], "budget_amount": 20, "updated_by": "bob"}))
    stored = get("budgets", budget_policy_id=policy["budget_policy_id"])["budget_policy"]
    assert (stored["created_by"], stored["last_updated_by"]) == ("alice", "alice")


# --- What is not the middleware's business passes as it came ------------------------------------


def test_artifact_uploads_stream_through_byte_for_byte(mlflow, alice_run):
    """Bytes that look like a forged body, on the native (ASGI) and the Flask upload routes."""
    forged = json.dumps({"user_id": "bob", "tags": [{"key": "mlflow.user", "value": "bob"}]}).encode()
    blob = forged + os.urandom(3 * 2**20)
    path = f"/api/2.0/mlflow-artifacts/artifacts/attribution/{uuid.uuid4().hex}.bin"
    assert mlflow.put(path, data=blob, headers=ALICE).ok
    assert mlflow.get(path, headers=ALICE).content == blob

    upload = mlflow.request("POST", "/ajax-api/2.0/mlflow/upload-artifact", params={"run_uuid": alice_run, "path": "forged.json"},
                            data=forged, headers={**ALICE, "Content-Type": "application/json"})  # fmt: skip
    assert upload.ok, upload.content
    stored = mlflow.get("/get-artifact", params={"run_uuid": alice_run, "path": "forged.json"}, headers=ALICE)
    assert stored.content == forged


CLIENT = """
import json, sys

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
from mlflow.tracking.request_header.registry import _request_header_provider_registry


class HubService(RequestHeaderProvider):  # stands in for the Hub service, which sets it on every request
    def in_context(self):
        return True

    def request_headers(self):
        return json.loads(sys.argv[1])  # alice, with the service's proof


_request_header_provider_registry.register(HubService)
experiment_id = mlflow.set_experiment("client").experiment_id
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5)
    model = mlflow.initialize_logged_model(name="model")
    try:
        mlflow.set_tag("mlflow.user", "bob")
        refused = None
    except MlflowException as error:
        refused = error.error_code


@mlflow.trace
def shout(text):
    return text.upper()


shout("hi")
trace_id = mlflow.get_last_active_trace_id()
mlflow.flush_trace_async_logging()
dataset = mlflow.genai.datasets.create_dataset(name="questions", experiment_id=experiment_id)
dataset.merge_records([{"inputs": {"question": "why"}, "expectations": {"answer": "because"}}])
print(json.dumps({"run": run.info.run_id, "model": model.model_id, "trace": trace_id, "dataset": dataset.dataset_id, "refused": refused}))
"""


# --- As team mode runs MLflow ---------------------------------------------------------------------


def test_in_team_mode_mlflows_client_works_and_everything_it_makes_is_alices(team_mlflow):
    """MLflow's own client, run as OS user jovyan (its mlflow.user), through a TCP port onto the
    socket: nothing it does normally is refused, and what it makes is alice's."""
    mlflow = team_mlflow
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "MLPROXY_"))}
    with forward(mlflow.unix_socket) as base:
        env.update(MLFLOW_TRACKING_URI=base, LOGNAME="jovyan", USER="jovyan")
        result = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(ALICE)], env=env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    made = json.loads(result.stdout.strip().splitlines()[-1])
    assert made["refused"] == "PERMISSION_DENIED"
    assert get_run(mlflow, made["run"])[0] == get_run(mlflow, made["run"])[1]["mlflow.user"] == "alice"
    assert model_tags(mlflow, made["model"])["mlflow.user"] == "alice"
    metadata, tags = trace_v3(mlflow, made["trace"])
    assert metadata["mlflow.user"] == tags["mlflow.user"] == "alice"
    assert get_dataset(mlflow, made["dataset"])["created_by"] == "alice"
    assert [record["created_by"] for record in dataset_records(mlflow, made["dataset"])] == ["alice"]


def test_in_team_mode_spans_cannot_name_a_traces_maker_either(team_mlflow):
    experiment_id = ok(team_mlflow.post("/api/2.0/mlflow/experiments/create", json={"name": "spans"}, headers=ALICE))["experiment_id"]
    otel_id = os.urandom(16)
    assert_refused(send_otlp(team_mlflow, experiment_id, otlp_export(otel_id, {"mlflow.traceTag.mlflow.user": "bob"})), "span attribute")
    assert send_otlp(team_mlflow, experiment_id, otlp_export(otel_id, {})).ok
