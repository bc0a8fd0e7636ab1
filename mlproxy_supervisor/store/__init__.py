"""MLflow's store as mlproxy prepares, checks and backs it up: the schema, SQLite and PostgreSQL, backups."""
