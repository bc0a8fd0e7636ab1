"""Two mlproxy hosts (two stacks, as if on two VMs) start at once on one PostgreSQL database whose
schema an older MLflow left: with `schema_upgrade = "backup-and-upgrade"` one backs it up and
upgrades while the other waits, and both serve what was there; with the default the start is
refused, naming the fix, and the database is untouched."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

from mlproxy_supervisor.exits import EXIT_CONFIG
from mlproxy_supervisor.store.postgres import SCHEMA_LOCK
from tests.stack import ROOT, Stack
from tests.support.ports import free_port
from tests.support.postgres import Postgres, binaries

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (apt-get install postgresql)"),
]

STEPS_BEHIND = 20  # migrations behind MLflow's head
WAITING = "waiting for another mlproxy host to finish with the schema"


@pytest.fixture(scope="module")
def postgres():
    server = Postgres(free_port()).init()
    server.start()
    yield server
    server.stop()


def old_database(postgres: Postgres, name: str) -> tuple[str, str]:
    """A database at an old revision, made by MLflow's own migrations, with one experiment."""
    postgres.create_database(name)
    uri = f"postgresql://mlproxy@127.0.0.1:{postgres.port}/{name}"
    made = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "make_old_database.py"), uri, str(STEPS_BEHIND)],
                          check=True, capture_output=True, text=True, timeout=300)  # fmt: skip
    return uri, made.stdout.strip().splitlines()[-1]


def revision(postgres: Postgres, name: str) -> str:
    return postgres.sql("SELECT version_num FROM alembic_version", database=name).strip()


def experiment_names(stack: Stack) -> set[str]:
    found = stack.session().get(stack.url("mlflow/api/2.0/mlflow/experiments/search"), params={"max_results": 100}, timeout=30)
    assert found.status_code == 200, found.text
    return {experiment["name"] for experiment in found.json()["experiments"]}


def test_two_hosts_upgrading_one_old_schema_at_once_take_turns(postgres, tmp_path):
    uri, old = old_database(postgres, "upgraded_together")
    config = f'[mlflow]\nbackend_store_uri = "{uri}"\nschema_upgrade = "backup-and-upgrade"\n'
    hosts = [Stack(tmp_path / name, config=config) for name in ("a", "b")]
    # A third party holds the lock first, so both hosts surely meet it: they wait, touching nothing.
    holder = psycopg.connect(uri, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    for stack in hosts:
        stack.start(wait=False)
    try:
        deadline = time.monotonic() + 120
        while not all(stack.output.exists() and WAITING in stack.output.read_text() for stack in hosts):
            assert time.monotonic() < deadline, [stack.tail() for stack in hosts]
            time.sleep(0.5)
        assert revision(postgres, "upgraded_together") == old
        holder.close()
        for stack in hosts:
            stack.wait_ready(timeout=300)
        outputs = [stack.output.read_text() for stack in hosts]
        upgraded = [i for i, text in enumerate(outputs) if "upgraded the schema of" in text]
        assert len(upgraded) == 1, outputs  # one host upgraded; the other found it done
        assert "backing up" not in outputs[1 - upgraded[0]]
        dumps = [path for stack in hosts for path in (stack.state_dir / "backups").glob("*.pgdump")]
        assert len(dumps) == 1 and old in dumps[0].name and dumps[0].stat().st_size > 0
        assert oct(dumps[0].stat().st_mode & 0o777) == "0o600"
        assert revision(postgres, "upgraded_together") != old
        for stack in hosts:  # what the old MLflow stored, served by both
            assert "kept-through-upgrade" in experiment_names(stack)
        assert "password" not in " ".join(outputs).lower()
    finally:
        holder.close()
        for stack in hosts:
            assert stack.stop() == 0


def test_an_old_schema_is_refused_by_default_and_left_untouched(postgres, tmp_path):
    uri, old = old_database(postgres, "refused")
    stack = Stack(tmp_path / "state", config=f'[mlflow]\nbackend_store_uri = "{uri}"\n')
    result = stack.mlproxy("up", timeout=120)
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    message = result.stderr
    assert "out-of-date schema" in message and old in message and "Nothing was changed" in message
    assert "mlflow db upgrade" in message and 'schema_upgrade = "backup-and-upgrade"' in message
    assert revision(postgres, "refused") == old
    assert not (stack.state_dir / "run" / "supervisord.sock").exists()
