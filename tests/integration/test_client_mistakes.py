"""Likely mistakes with the tracking URI, as a real MLflow client meets them: the answer says what
is wrong and the fix, and the client shows it whole (not Jupyter's 404 page, not "the token is
wrong" for a token that is right)."""

from __future__ import annotations

import pytest

from tests.support.mlflow_client import run_client
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

SET_EXPERIMENT = """
import json, mlflow
from mlflow.exceptions import MlflowException
try:
    mlflow.set_experiment("client-mistake")
    print(json.dumps({"error": None}))
except MlflowException as error:
    print(json.dumps({"error": error.message}))
"""


@pytest.mark.parametrize(
    ("mistake", "uri", "said"),
    [
        # The URL `mlproxy up` prints, pasted as the tracking URI.
        ("token in the URI", "{base}/mlflow/?token={token}", ["BAD_REQUEST", "holds a query (?token=...)", "(no query)", "MLFLOW_TRACKING_TOKEN"]),
        ("no /mlflow", "{base}", ["ENDPOINT_NOT_FOUND", "MLflow's API at Jupyter's root", "lacks /mlflow"]),
        ("another port", "{base}/proxy/{other}", ["ENDPOINT_NOT_FOUND", "nothing answers on port {other}", "served at /proxy/{port}/"]),
    ],
)
def test_the_client_is_told_what_is_wrong_and_the_fix(shared_stack, mistake, uri, said):
    names = {"base": shared_stack.base, "token": shared_stack.token, "other": free_port(), "port": shared_stack.mlflow_port}
    # MLFLOW_HTTP_REQUEST_MAX_RETRIES=0: an answer MLflow would retry fails at once, not minutes later.
    answer = run_client(SET_EXPERIMENT, shared_stack.base, shared_stack.token, timeout=120,
                        tracking_uri=uri.format(**names), env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})  # fmt: skip
    message = answer["error"]
    assert message is not None, f"{mistake}: the client went on"
    for words in [*said, f"MLFLOW_TRACKING_URI={shared_stack.base}/mlflow"]:
        assert words.format(**names) in message, f"{mistake}: {message}"
    assert "<html" not in message.lower() and shared_stack.token not in message, message


def test_the_token_leaves_the_address_bar_after_the_first_visit(shared_stack):
    browser = shared_stack.session()
    del browser.headers["Authorization"]  # a browser: only the URL `mlproxy up` printed
    browser.headers["Accept"] = "text/html,application/xhtml+xml"
    first = browser.get(shared_stack.url(f"mlflow/?token={shared_stack.token}&o=1"), allow_redirects=False, timeout=30)
    assert first.status_code == 302, first.text[:300]
    assert first.headers["Location"] == "/mlflow/?o=1" and shared_stack.token not in first.headers["Location"]
    page = browser.get(shared_stack.url(first.headers["Location"]), timeout=30)  # logged in by the cookie
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
