"""Checks before anything starts: cheap imports, and a missing driver's fix that works from a
checkout."""

from __future__ import annotations

import subprocess
import sys


def test_preflight_of_a_sqlite_store_does_not_import_sqlalchemy(tmp_path):
    # `mlproxy up` runs the preflight before anything starts: every import there delays READY.
    code = (
        "import sys; from mlproxy_supervisor import preflight; from mlproxy_supervisor.config import Settings; "
        f"assert not preflight.check_dependencies(Settings(state_dir={str(tmp_path)!r})); "
        "assert 'sqlalchemy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_postgres_driver_hint_works_from_a_checkout(monkeypatch, tmp_path):
    from mlproxy_supervisor import preflight
    from mlproxy_supervisor.config import Settings

    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None if name == "psycopg" else real(name))
    settings = Settings(state_dir=tmp_path, mlflow={"backend_store_uri": "postgresql://ml@db.internal/mlflow"})
    [problem] = preflight.check_dependencies(settings)
    assert "driver psycopg" in problem.what
    assert problem.fix == "in your mlproxy checkout: pip install -c constraints.txt '.[postgres]'  (or pip install 'psycopg[binary]')"
