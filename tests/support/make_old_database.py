"""Create a real MLflow database at an older schema revision (for the upgrade tests).

usage: python make_old_database.py PATH|URI [STEPS_BEHIND]   (a SQLite file, or a database URI)
Builds the initial tables the way MLflow does, then runs MLflow's own alembic migrations up to
the revision STEPS_BEHIND below head, and adds one experiment so there is data to protect.
"""

import sys

import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

path, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
uri = path if "://" in path else f"sqlite:///{path}"
config = _get_alembic_config(uri)
revisions = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions()]
engine = sqlalchemy.create_engine(uri)
InitialBase.metadata.create_all(engine)
with engine.begin() as connection:
    config.attributes["connection"] = connection
    command.upgrade(config, revisions[steps])
with engine.begin() as connection:
    connection.execute(sqlalchemy.text(
        "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
        "VALUES (1, 'kept-through-upgrade', 'mlflow-artifacts:/1', 'active')"
    ))
print(revisions[steps])
