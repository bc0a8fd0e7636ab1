"""Every unit test runs without the variables the product reads, whatever the shell that started
pytest has set (a developer's MLPROXY_*, systemd's STATE_DIRECTORY or JOURNAL_STREAM when CI runs
in a unit, a PGPASSWORD): the names come from the product, so a new one is cleaned too."""

from __future__ import annotations

import os

import pytest

from mlproxy_supervisor.config import ENV_PREFIX, OTHER_ENV
from mlproxy_supervisor.credentials import STORE_SECRETS, SYSTEMD_CREDENTIALS_ENV

# What systemd sets for every unit it runs; preflight and `mlproxy up` read it to tell.
INVOCATION_ENV = "INVOCATION_ID"
CLEANED = frozenset((*OTHER_ENV, *STORE_SECRETS, SYSTEMD_CREDENTIALS_ENV, INVOCATION_ENV))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in CLEANED:
            monkeypatch.delenv(name)
