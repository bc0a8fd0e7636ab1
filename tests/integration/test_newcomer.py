"""Rough edges a newcomer hit: the slash-less /proxy/<port>."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", ["proxy/{port}", "proxy/localhost:{port}", "mlflow"])
def test_slashless_route_redirects_to_the_page_whose_assets_load(shared_stack, path):
    path = path.format(port=shared_stack.mlflow_port)
    session = shared_stack.session()
    response = session.get(shared_stack.url(path), allow_redirects=False, timeout=30)
    assert response.status_code in (301, 302), response.text[:200]
    assert response.headers["Location"].endswith(f"/{path}/")
    page = session.get(shared_stack.url(path), timeout=30)
    assert page.url.endswith(f"/{path}/") and "<title>MLflow</title>" in page.text
