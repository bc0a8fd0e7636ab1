"""The connection pg_dump/pg_restore/psql get: a libpq URI with no password in it, the password
found where MLflow finds it."""

from __future__ import annotations

import pytest

from mlproxy_supervisor.credentials import write_private
from mlproxy_supervisor.store import postgres


@pytest.mark.parametrize(
    ("uri", "plain", "password"),
    [
        ("postgresql://ml:s3cret@db:5432/mlflow", "postgresql://ml@db:5432/mlflow", "s3cret"),
        ("postgresql+psycopg2://ml:p%3Aw@db/mlflow?sslmode=require", "postgresql://ml@db/mlflow?sslmode=require", "p:w"),
        ("postgresql://ml@db/mlflow?password=inquery&sslmode=require", "postgresql://ml@db/mlflow?sslmode=require", "inquery"),
        ("postgresql://ml@db/mlflow", "postgresql://ml@db/mlflow", None),
    ],
)
def test_the_password_is_taken_out_of_the_uri(uri, plain, password):
    assert postgres.connection(uri, None) == (plain, password)


def test_the_password_comes_from_the_credentials_file_or_the_environment(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets"
    write_private(secrets, "PGPASSWORD=from-file\n")
    assert postgres.connection("postgresql://ml@db/mlflow", str(secrets))[1] == "from-file"
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert postgres.connection("postgresql://ml@db/mlflow", str(secrets))[1] == "from-env"  # as for MLflow


def test_password_file_escapes_its_separators():
    assert postgres._escape("a:b\\c") == "a\\:b\\\\c"


def test_only_postgres_uris_are_postgres():
    assert postgres.is_postgres("postgresql+psycopg2://db/x") and postgres.is_postgres("postgres://db/x")
    assert not postgres.is_postgres("sqlite:////var/lib/mlproxy/mlflow.db")
    assert not postgres.is_postgres("mysql://db/x")
