"""MLflow's UI inside Jupyter, under /mlflow/ and /proxy/<port>/, against MLflow's own port.

The same tour runs on MLflow directly and on each route. Through a route, no request may leave the
prefix, and every failed answer (>= 400 or a network error) must be one MLflow itself also gives
for the same tour (for example its optional /users/current, 404 without an auth plugin).
"""

from __future__ import annotations

import pytest

from tests.browser.browser import Traffic, log_in
from tests.browser.mlflow_ui import tour
from tests.support.direct import forward

pytestmark = pytest.mark.browser


def _direct_failures(open_browser, stack, demo) -> set:
    """MLflow's own UI, served straight from its socket (through a TCP forwarder: a browser cannot
    open a unix socket): the baseline of what fails without the route."""
    context = open_browser()
    traffic = Traffic.watch(context)
    with forward(stack.mlflow_socket) as address:
        direct = f"{address}/"
        tour(context.new_page(), direct, demo)
    assert not traffic.outside(direct), f"MLflow's own UI left its origin: {traffic.outside(direct)}"
    return traffic.errors_under(direct)


@pytest.mark.parametrize("route", ["mlflow", "proxy"])
def test_tour_through_the_route_stays_under_the_prefix(open_browser, shared_stack, demo_run, route):
    prefix = f"{shared_stack.base}/{'mlflow' if route == 'mlflow' else f'proxy/{shared_stack.mlflow_port}'}/"
    baseline = _direct_failures(open_browser, shared_stack, demo_run)

    context = open_browser()
    page = context.new_page()
    log_in(page, shared_stack.base, shared_stack.token, prefix.removeprefix(shared_stack.base))
    traffic = Traffic.watch(context)
    tour(page, prefix, demo_run, pictures=route == "mlflow")

    assert traffic.requests, "no traffic recorded"
    assert not traffic.outside(prefix), "requests left the prefix:\n" + "\n".join(traffic.outside(prefix))
    extra = traffic.errors_under(prefix) - baseline
    assert not extra, (
        f"failures through {prefix} that MLflow itself does not give: {sorted(extra)}; its own: {baseline}"
    )
