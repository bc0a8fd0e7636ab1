"""Team mode: who made something in MLflow is the Hub user the service vouches for, whatever the
client sends.

MLflow stores the maker's name as the client sends it (a run's `user_id` and `mlflow.user` tag, a
trace's or logged model's `mlflow.user`, a dataset's `created_by` taken from its `mlflow.user`
tag, the `created_by` of issues and gateway objects) and lets `mlflow.user` be changed later. In
team mode the Hub service sets `X-MLproxy-User: <hub user>` on every request it relays, after
removing any the client sent, and nothing else reaches MLflow's socket: inside MLflow's process
that header is the truth. Two middlewares act on it (`install` puts both in place):

- `Attribution` wraps MLflow's Flask app (REST 2.0 and 3.0 under /api/ and /ajax-api/, graphql).
  On the routes in `ROUTES` it rewrites the JSON body so that what MLflow stores names the header's
  user ("stamped"), or answers 403 PERMISSION_DENIED to a write that would change `mlflow.user`
  ("refused"). Other requests, artifact uploads among them, pass through unread.
- `OtlpAttribution`, a middleware of MLflow's FastAPI app, guards the one native route that can
  carry a maker, OTLP `POST /v1/traces`: a root span attribute `mlflow.traceTag.mlflow.user`
  becomes the trace's `mlflow.user` tag, so a request carrying one is refused.

docs/team-attribution.md lists every write route MLflow serves, with what each enforces and why.

How bodies are read:
- Without the header a request passes untouched (single-user mode never installs these).
- A body MLflow cannot read as a JSON object passes untouched: MLflow reads it as empty. Inside
  an object only the attribution values change, so a malformed request stays malformed. MLflow
  keeps the fields it parsed before an error (`{"user_id": "bob", "tags": {}}` creates a run by
  bob), so the values are rewritten even in a malformed request. The strings written are moved
  first, where MLflow parses them before anything that could stop it; a string cannot fail to
  parse, so this changes nothing else MLflow reads.
- A field is stamped under both of protobuf's JSON spellings (`user_id`, `userId`); an older
  client's double-encoded body (a JSON string holding the object) is read as MLflow reads it and
  stays double-encoded.
- A key names `mlflow.user` whatever its case and surrounding spaces: under a case-insensitive
  MySQL collation `MLflow.User` is the same row.
- Bodies on these routes are read whole, up to BODY_LIMIT; a larger one is refused with 413
  (passing it unread would let padding carry a forged name through).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from google.protobuf.json_format import Parse as parse_json_proto
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR, _get_tracking_store
from mlflow.server.otel_api import _convert_otlp_json_ids_to_base64
from mlflow.tracing.constant import SpanAttributeKey
from mlflow.tracing.utils.otlp import OTLP_TRACES_PATH, decompress_otlp_body
from mlflow.utils.mlflow_tags import MLFLOW_USER
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette._utils import get_route_path  # the path Starlette's router matches on
from starlette.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length, get_input_stream

from ..relay.answers import ERROR_CODES
from .identity import caller

# A dataset upsert sends the whole evaluation set in one request; MLflow's WSGI bridge holds
# every body in memory anyway, so this bounds the extra copy, not what MLflow accepts.
BODY_LIMIT = 64 * 1024 * 1024


# --- The user and the keys that name one --------------------------------------------------------


def hub_user(get_header) -> str | None:
    """The Hub user a request names, read as hub/identity.py reads it for MLflow's auth app (with the
    service's proof): what is stamped is the name permissions are granted to. None when the request
    names none (MLflow's auth app then refuses it anyway)."""
    found = caller(get_header)
    return found[0] if found else None


def environ_header(environ):
    """A WSGI environ's header, by its HTTP name (as werkzeug and Starlette's bridge spell it)."""
    return lambda name: environ.get("HTTP_" + name.upper().replace("-", "_"))


def names_user(key: Any) -> bool:
    return isinstance(key, str) and key.strip().casefold() == MLFLOW_USER


def refusal(what: str) -> str:
    return f"{what} is refused: mlflow.user is set by the server in team mode to the Hub user who made it; it cannot be changed."


# --- Reading and stamping JSON as protobuf reads it ---------------------------------------------


def _json_name(field: str) -> str:
    """protobuf's JSON spelling of a field (`trace_info` -> `traceInfo`); ParseDict takes both."""
    head, *rest = field.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _spellings(message: dict, field: str) -> list[str]:
    return [key for key in dict.fromkeys((field, _json_name(field))) if key in message]


def _values(message: dict, field: str) -> list[Any]:
    return [message[key] for key in _spellings(message, field)]


def _loads(text: str | bytes) -> Any:
    """JSON as Flask's get_json reads it; None for what it cannot read."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _move_first(mapping: dict, keys: Iterable[str]) -> None:
    """Puts those of these keys that hold strings first: protobuf parses a JSON object in its
    order, and MLflow keeps what was parsed before an error. A string cannot fail to parse, so
    nothing else MLflow reads changes; anything else stays where the client put it."""
    front = {key: mapping.pop(key) for key in keys if isinstance(mapping.get(key), str)}
    rest = dict(mapping)
    mapping.clear()
    mapping.update(front)
    mapping.update(rest)


def _set_field(message: dict, field: str, user: str) -> None:
    keys = _spellings(message, field) or [field]
    for key in keys:
        message[key] = user
    _move_first(message, keys)


def _stamp_map(mapping: dict, user: str) -> None:
    for key in [key for key in mapping if names_user(key)]:
        mapping[key] = user
    mapping[MLFLOW_USER] = user
    _move_first(mapping, [MLFLOW_USER])


def _stamp_map_field(message: dict, field: str, user: str) -> None:
    """A map field (JSON object) names the user; absent or null, it is added."""
    for key in _spellings(message, field) or [field]:
        value = message.get(key)
        if value is None:
            message[key] = {MLFLOW_USER: user}
        elif isinstance(value, dict):
            _stamp_map(value, user)


def _stamp_entries(message: dict, field: str, user: str, add: bool = True) -> None:
    """A repeated {key, value} field (a run's tags, a v2 trace's metadata) names the user; unless
    one entry is exactly `mlflow.user`, one is added first (`add`)."""
    for key in _spellings(message, field) or ([field] if add else []):
        entries = message.get(key)
        if entries is None and add:
            message[key] = entries = []
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict) and names_user(entry.get("key")):
                entry["value"] = user
        if add and not any(isinstance(entry, dict) and entry.get("key") == MLFLOW_USER for entry in entries):
            entries.insert(0, {"key": MLFLOW_USER, "value": user})


def _names_user_in_entries(message: dict, field: str) -> bool:
    return any(
        isinstance(entry, dict) and names_user(entry.get("key"))
        for entries in _values(message, field) if isinstance(entries, list)
        for entry in entries
    )  # fmt: skip


def _stamp_json_map(message: dict, field: str, user: str) -> None:
    """A string field holding a JSON object (a dataset's tags) names the user; absent, null or
    empty (read by MLflow as no tags), it is added."""
    keys = _spellings(message, field) or [field]
    for key in keys:
        value = message.get(key)
        if value is None or value == "":
            message[key] = json.dumps({MLFLOW_USER: user})
        elif isinstance(value, str) and isinstance(tags := _loads(value), dict):
            _stamp_map(tags, user)
            message[key] = json.dumps(tags)
    _move_first(message, keys)


# --- What each route enforces -------------------------------------------------------------------


@dataclass
class Call:
    user: str
    body: dict | None  # the JSON object, for routes that read one
    view_args: dict[str, Any]
    recorded_by: Callable[[str], set[str]]  # the names a stored trace records as its maker


Enforce = Callable[[Call], "str | None"]  # a refusal message, or None after stamping in place


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # MLflow's Flask rule, without the static prefix
    enforce: Enforce
    stamps: bool  # rewrites the body (else only refuses)
    reads_body: bool = True


def _stamp_fields(*fields: str) -> Enforce:
    def enforce(call: Call) -> None:
        for field in fields:
            _set_field(call.body, field, call.user)

    return enforce


def _create_run(call: Call) -> None:
    _stamp_entries(call.body, "tags", call.user)
    _set_field(call.body, "user_id", call.user)  # first of all: a bad tag stops the parse


def _create_logged_model(call: Call) -> None:
    _stamp_entries(call.body, "tags", call.user)


def _recorded_by_another(call: Call, trace_id: str) -> str | None:
    # Not naming the other user: the caller may have no right to read that trace.
    if call.recorded_by(trace_id) - {call.user}:
        return (
            f"Writing the trace info of trace {trace_id!r} as {call.user} is refused: another user recorded that "
            "trace (its mlflow.user), and in team mode who made a trace cannot be changed."
        )
    return None


def _start_trace_v3(call: Call) -> str | None:
    # Starting a trace whose id exists merges into it (the client's OTLP spans usually came
    # first), so it must not re-attribute someone else's trace.
    for trace in _values(call.body, "trace"):
        if not isinstance(trace, dict):
            continue
        for info in _values(trace, "trace_info"):
            if not isinstance(info, dict):
                continue
            # The id checked must be the id parsed: a string one goes first, and one that is not a
            # string stops the parse, leaving the trace id "".
            ids = _spellings(info, "trace_id")
            _move_first(info, ids)
            for trace_id in [info[key] if isinstance(info[key], str) else "" for key in ids] or [""]:
                if message := _recorded_by_another(call, trace_id):
                    return message
            _stamp_map_field(info, "trace_metadata", call.user)
            _stamp_map_field(info, "tags", call.user)
    return None


def _start_trace_v2(call: Call) -> None:
    _stamp_entries(call.body, "request_metadata", call.user)
    _stamp_entries(call.body, "tags", call.user)


def _end_trace_v2(call: Call) -> str | None:
    # Ending merges metadata and tags into the trace: the client's own mlflow.user (its OS user,
    # say) is replaced by the caller's, which changes nothing on the caller's own trace.
    fields = ("request_metadata", "tags")
    if not any(_names_user_in_entries(call.body, field) for field in fields):
        return None
    if message := _recorded_by_another(call, call.view_args["request_id"]):
        return message
    for field in fields:
        _stamp_entries(call.body, field, call.user, add=False)
    return None


def _create_dataset(call: Call) -> None:
    # MLflow 3.17 takes the dataset's created_by from its mlflow.user tag and ignores the
    # message's created_by field; stamping the field too keeps a later MLflow from reading it.
    _stamp_json_map(call.body, "tags", call.user)
    _set_field(call.body, "created_by", call.user)


def _upsert_dataset_records(call: Call) -> None:
    # Each record's mlflow.user tag is its created_by (new) and the dataset's last_updated_by;
    # updated_by is unread by MLflow 3.17, stamped for the same reason as created_by above.
    keys = _spellings(call.body, "records")
    for key in keys:
        records = _loads(call.body[key]) if isinstance(call.body[key], str) else None
        if not isinstance(records, list):
            continue
        for record in records:
            if isinstance(record, dict):
                _stamp_map_field(record, "tags", call.user)
        call.body[key] = json.dumps(records)
    _move_first(call.body, keys)
    _set_field(call.body, "updated_by", call.user)


def _refuse_key_field(what: str) -> Enforce:
    def enforce(call: Call) -> str | None:
        return refusal(what) if any(names_user(key) for key in _values(call.body, "key")) else None

    return enforce


def _refuse_entries(what: str) -> Enforce:
    def enforce(call: Call) -> str | None:
        return refusal(what) if _names_user_in_entries(call.body, "tags") else None

    return enforce


def _refuse_json_map(what: str) -> Enforce:
    def enforce(call: Call) -> str | None:
        for value in _values(call.body, "tags"):
            tags = _loads(value) if isinstance(value, str) else None
            if isinstance(tags, dict) and any(names_user(key) for key in tags):
                return refusal(what)
        return None

    return enforce


def _refuse_path_key(parameter: str, what: str) -> Enforce:
    def enforce(call: Call) -> str | None:
        return refusal(what) if names_user(call.view_args.get(parameter)) else None

    return enforce


def _both(method: str, version_path: str, enforce: Enforce, stamps: bool, reads_body: bool = True) -> list[Route]:
    """The route under /api/ and /ajax-api/: MLflow serves its REST API at both."""
    return [Route(method, f"/{prefix}/{version_path}", enforce, stamps, reads_body) for prefix in ("api", "ajax-api")]


STAMPED, REFUSED = True, False
ROUTES: list[Route] = [
    # Runs
    *_both("POST", "2.0/mlflow/runs/create", _create_run, STAMPED),
    Route("POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run", _stamp_fields("user_id"), STAMPED),
    *_both("POST", "2.0/mlflow/runs/set-tag", _refuse_key_field("Setting the run tag mlflow.user"), REFUSED),
    *_both("POST", "2.0/mlflow/runs/delete-tag", _refuse_key_field("Deleting the run tag mlflow.user"), REFUSED),
    *_both("POST", "2.0/mlflow/runs/log-batch", _refuse_entries("Logging the run tag mlflow.user"), REFUSED),
    # Logged models
    *_both("POST", "2.0/mlflow/logged-models", _create_logged_model, STAMPED),
    *_both("PATCH", "2.0/mlflow/logged-models/<model_id>/tags", _refuse_entries("Setting the logged-model tag mlflow.user"), REFUSED),
    *_both("DELETE", "2.0/mlflow/logged-models/<model_id>/tags/<tag_key>",
           _refuse_path_key("tag_key", "Deleting the logged-model tag mlflow.user"), REFUSED, reads_body=False),
    # Traces
    *_both("POST", "3.0/mlflow/traces", _start_trace_v3, STAMPED),
    *_both("POST", "2.0/mlflow/traces", _start_trace_v2, STAMPED),
    *_both("PATCH", "2.0/mlflow/traces/<request_id>", _end_trace_v2, STAMPED),
    *_both("PATCH", "2.0/mlflow/traces/<request_id>/tags", _refuse_key_field("Setting the trace tag mlflow.user"), REFUSED),
    *_both("DELETE", "2.0/mlflow/traces/<request_id>/tags", _refuse_key_field("Deleting the trace tag mlflow.user"), REFUSED),
    *_both("PATCH", "3.0/mlflow/traces/<trace_id>/tags", _refuse_key_field("Setting the trace tag mlflow.user"), REFUSED),
    *_both("DELETE", "3.0/mlflow/traces/<trace_id>/tags", _refuse_key_field("Deleting the trace tag mlflow.user"), REFUSED),
    # Evaluation datasets
    *_both("POST", "3.0/mlflow/datasets/create", _create_dataset, STAMPED),
    *_both("POST", "3.0/mlflow/datasets/<dataset_id>/records", _upsert_dataset_records, STAMPED),
    *_both("PATCH", "3.0/mlflow/datasets/<dataset_id>/tags", _refuse_json_map("Setting the dataset tag mlflow.user"), REFUSED),
    *_both("DELETE", "3.0/mlflow/datasets/<dataset_id>/tags/<key>",
           _refuse_path_key("key", "Deleting the dataset tag mlflow.user"), REFUSED, reads_body=False),
    # Issues
    *_both("POST", "3.0/mlflow/issues", _stamp_fields("created_by"), STAMPED),
    # AI gateway: MLflow stores created_by and updated_by as the body gives them.
    *_both("POST", "3.0/mlflow/gateway/secrets/create", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/secrets/update", _stamp_fields("updated_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/endpoints/create", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/endpoints/update", _stamp_fields("updated_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/model-definitions/create", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/model-definitions/update", _stamp_fields("updated_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/endpoints/models/attach", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/endpoints/bindings/create", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/budgets/create", _stamp_fields("created_by"), STAMPED),
    *_both("POST", "3.0/mlflow/gateway/budgets/update", _stamp_fields("updated_by"), STAMPED),
]  # fmt: skip


def recorded_by(trace_id: str) -> set[str]:
    """The names a stored trace records as its maker (mlflow.user in its metadata and tags);
    empty when there is no such trace."""
    try:
        info = _get_tracking_store().get_trace_info(trace_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return set()
        raise
    return {value for mapping in (info.trace_metadata, info.tags) for key, value in mapping.items() if names_user(key)}


# --- The WSGI middleware ------------------------------------------------------------------------


def _static_prefix() -> str:
    """MLflow's --static-prefix, as its routes carry it."""
    return os.environ.get(STATIC_PREFIX_ENV_VAR, "").rstrip("/")


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error_code": ERROR_CODES[status], "message": message}).encode()


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _too_large() -> str:
    return (
        f"The request body is larger than {BODY_LIMIT // 2**20} MiB, the most the server reads in team mode to set "
        "who made what it creates; send less at once (a large dataset upsert in batches)."
    )


class Attribution:
    """WSGI middleware for MLflow's Flask app: `flask_app.wsgi_app = Attribution(flask_app.wsgi_app)`.
    Routes are matched with that Flask app's own URL map (MLflow's, unless another is given), so a
    request is enforced exactly when Flask would dispatch it to the route."""

    def __init__(self, app, flask_app=None, recorded_by: Callable[[str], set[str]] = recorded_by):
        if flask_app is None:
            from mlflow.server import app as flask_app
        self.app = app
        self.flask_app = flask_app
        self.recorded_by = recorded_by
        prefix = _static_prefix()
        self.routes = {(route.method, prefix + route.path): route for route in ROUTES}

    def __call__(self, environ, start_response) -> Iterable[bytes]:
        user = hub_user(environ_header(environ))
        route, view_args = self._route(environ) if user else (None, None)
        if route is None:
            return self.app(environ, start_response)
        body = None
        if route.reads_body:
            raw = self._read_body(environ)
            if raw is None:
                return self._answer(start_response, 413, _error_body(413, _too_large()))
            body = _JsonBody(raw)
            if body.message is None:
                return self.app(environ, start_response)  # MLflow reads it as empty
        try:
            message = route.enforce(Call(user, body.message if body else None, view_args, self.recorded_by))
        except MlflowException as error:  # the store could not answer whose trace it is
            return self._answer(start_response, error.get_http_status_code(), error.serialize_as_json().encode())
        if message is not None:
            return self._answer(start_response, 403, _error_body(403, message))
        if route.stamps:
            rewritten = body.dumps()
            environ["wsgi.input"] = io.BytesIO(rewritten)
            environ["CONTENT_LENGTH"] = str(len(rewritten))
        return self.app(environ, start_response)

    def _route(self, environ) -> tuple[Route | None, dict | None]:
        try:
            adapter = self.flask_app.create_url_adapter(self.flask_app.request_class(environ))
            rule, view_args = adapter.match(return_rule=True)
        except HTTPException:  # Flask answers these itself (404, 405, redirects, a bad Host)
            return None, None
        return self.routes.get((environ["REQUEST_METHOD"], rule.rule)), view_args

    @staticmethod
    def _read_body(environ) -> bytes | None:
        """The body as Flask reads it (werkzeug's rules for Content-Length and chunking), or None
        when it is larger than BODY_LIMIT. The environ gets a stream that reads it again."""
        length = get_content_length(environ)
        if length is not None and length > BODY_LIMIT:
            return None
        try:
            raw = get_input_stream(environ).read(BODY_LIMIT + 1)
        except HTTPException:  # shorter than its Content-Length: Flask's read of b"" fails alike
            raw = b""
        if len(raw) > BODY_LIMIT:
            return None
        environ["wsgi.input"] = io.BytesIO(raw)
        return raw

    @staticmethod
    def _answer(start_response, status: int, body: bytes) -> list[bytes]:
        start_response(_status_line(status), [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


class _JsonBody:
    """A request body as MLflow's handlers read it: a JSON object, or (from older clients) a
    JSON string holding one. `message` is None for anything else."""

    def __init__(self, raw: bytes):
        value = _loads(raw)
        self.double_encoded = isinstance(value, str)
        if self.double_encoded:
            value = _loads(value)
        self.message = value if isinstance(value, dict) else None

    def dumps(self) -> bytes:
        text = json.dumps(self.message)
        return (json.dumps(text) if self.double_encoded else text).encode()


# --- The ASGI middleware for OTLP ---------------------------------------------------------------


def _otlp_sets_user_tag(raw: bytes, headers: Headers) -> bool:
    """Whether MLflow's OTLP endpoint would store an mlflow.user trace tag from this request
    (read exactly as mlflow.server.otel_api reads it)."""
    content_type, content_encoding = headers.get("content-type"), headers.get("content-encoding")
    media_type = content_type.split(";")[0].strip() if content_type else None
    request = ExportTraceServiceRequest()
    try:
        if content_encoding:
            raw = decompress_otlp_body(raw, content_encoding.lower())
        if media_type == "application/json":
            parse_json_proto(_convert_otlp_json_ids_to_base64(raw), request, ignore_unknown_fields=True)
        elif media_type == "application/x-protobuf":
            request.ParseFromString(raw)
        else:
            return False
    except Exception:  # the same reading fails in MLflow, which then stores nothing
        return False
    prefix = SpanAttributeKey.TRACE_TAG_PREFIX
    for resource_spans in request.resource_spans:
        # MLflow skips resource attributes under "mlflow." (case-sensitively) and keeps the rest
        # as trace tags.
        if any(names_user(attribute.key) for attribute in resource_spans.resource.attributes):
            return True
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if any(
                    attribute.key.startswith(prefix) and names_user(attribute.key[len(prefix):])
                    for attribute in span.attributes
                ):
                    return True
    return False


class OtlpAttribution:
    """ASGI middleware for MLflow's FastAPI app: refuses OTLP span exports that would set a
    trace's mlflow.user tag. The OTLP route carries no maker of its own: a trace's mlflow.user
    comes from the trace info the client starts with `POST /api/3.0/mlflow/traces`, stamped by
    `Attribution`."""

    def __init__(self, app):
        self.app = app
        self.path = _static_prefix() + OTLP_TRACES_PATH

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != self.path:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if hub_user(headers.get) is None:
            return await self.app(scope, receive, send)
        chunks, size, more_body = [], 0, True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left: there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > BODY_LIMIT:
                return await self._answer(send, 413, _too_large())
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        raw = b"".join(chunks)
        if _otlp_sets_user_tag(raw, headers):
            return await self._answer(
                send, 403, refusal("Setting the trace tag mlflow.user through a span attribute (mlflow.traceTag.mlflow.user)")
            )
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        return await self.app(scope, replay, send)

    @staticmethod
    async def _answer(send, status: int, message: str) -> None:
        body = _error_body(status, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def install(flask_app, asgi_app) -> None:
    """Both middlewares, in place: on MLflow's Flask app, and on the (FastAPI) app that mounts it,
    before it serves its first request."""
    flask_app.wsgi_app = Attribution(flask_app.wsgi_app, flask_app)
    asgi_app.add_middleware(OtlpAttribution)
