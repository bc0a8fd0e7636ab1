"""The protocol fuzz tier: generated raw HTTP/1.1 against the real stack's route (issue #21).

tests/support/protocol_fuzz.py generates the cases and states the invariants. Here, 5,000 cases
(MLPROXY_FUZZ_CASES to change it) against the hostile tier's stack; benchmarks/protocol_fuzz.py
runs 100,000 and its figures are in docs/SECURITY.md. A case the fuzzer finds becomes a plain
test in tests/hostile/test_protocol.py.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.protocol_fuzz import Run, cases, login_cookie, run_case

CASES = int(os.environ.get("MLPROXY_FUZZ_CASES", "5000"))

pytestmark = pytest.mark.fuzz


def test_no_generated_request_harms_the_next_client_or_leaks_the_token(target):
    run = Run(target)
    cookie = login_cookie(target)

    @settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases(target, cookie))
    def one_case(case):
        # Fail at once on what a single case shows, so hypothesis can shrink it to a minimal one.
        assert not run_case(run, case)

    one_case()
    print(run.summary())
    assert run.cases >= CASES
    assert not run.violations(), run.violations()
    assert target.victim_is_answered_right()
