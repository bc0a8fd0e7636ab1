"""The team tier's fixtures: Hubs from tests/support/hub.py, each stopped (and checked to leave no
process) when its test ends. A missing requirement fails rather than skips: the tier must run in CI."""

from __future__ import annotations

import pytest

from tests.support.hub import SETUP_HINT, Hub, missing_requirements


@pytest.fixture
def make_hub():
    """make_hub(extra_config=..., env=..., users=...) -> a started Hub; all are stopped at teardown,
    which fails if one leaves a process or a port behind."""
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the team tier needs {'; '.join(missing)}. {SETUP_HINT}", pytrace=False)
    hubs: list[Hub] = []

    def make(**options) -> Hub:
        hub = Hub(**options)
        hubs.append(hub)
        return hub.start()

    yield make
    problems = []
    for hub in hubs:
        try:
            hub.stop()
        except AssertionError as error:
            problems.append(str(error))
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def hub(make_hub) -> Hub:
    """A Hub with the harness's base configuration only."""
    return make_hub()
