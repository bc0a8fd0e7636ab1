"""MLflow's schema revisions, read from its migration scripts without importing alembic's."""

from __future__ import annotations

import os

from mlproxy_supervisor.store import schema


def test_migration_revisions_are_read_from_plain_and_unusual_scripts():
    plain = 'revision = "b2"\ndown_revision = "a1"\nbranch_labels = None\n'
    assert schema._revision_assignments(plain) == {"revision": "b2", "down_revision": "a1"}
    merge = 'revision: str = "c3"\ndown_revision = (\n    "b2",\n    "x9",\n)\n'
    assert schema._revision_assignments(merge) == {"revision": "c3", "down_revision": ("b2", "x9")}


def test_expected_schema_revision_matches_mlflows_own():
    import mlflow.store
    from alembic.script import ScriptDirectory

    directory = os.path.join(os.path.dirname(mlflow.store.__file__), "db_migrations")
    head, known = schema._migration_revisions()
    assert head == ScriptDirectory(directory).get_current_head()
    assert len(known) > 50
