"""jupyter-server-proxy's own proxy tests (its sdist's tests/test_proxies.py, fetched at run time)
with MLflowProxyHandler serving their routes: see tests/support/jsp_suite.py for how it takes
their handler's place and why each designed difference does not apply."""

from tests.support import jsp_suite


def test_every_case_of_jupyter_server_proxys_own_suite_that_applies_passes_through_our_handler(tmp_path):
    results = jsp_suite.run_in(tmp_path)
    assert len(results) > 100, f"their suite ran only {len(results)} cases: {results}"
    assert jsp_suite.unexpected_failures(results) == {}
    designed = {name for name in results if jsp_suite.why_it_does_not_apply(name)}
    # 122 cases: 74 apply since the route refuses websocket upgrades (issue #21), 88 before.
    assert len(results) - len(designed) > 70, "most of their cases apply and must have run"
