"""The programs supervisord runs for mlproxy, and what the agent asks MLflow (no imports: the
launcher and MLflow's own process read this too)."""

SERVICES = ("mlflow", "jupyter")  # started by the agent, in this order
PROGRAMS = ("agent", *SERVICES)  # supervisord starts the agent itself

# What the probes ask MLflow (directly and through Jupyter). mlflow_app.py keeps these requests
# out of MLflow's access log, or they would be most of it (5 lines every 2 s).
MLFLOW_LIVENESS = "/health"
MLFLOW_READINESS = "/api/2.0/mlflow/experiments/search?max_results=1"  # touches the store
# Lists the top of the artifact store (a directory listing, or one S3 ListObjects call of at
# most 1000 keys): a database that answers is not enough when the object store is gone.
MLFLOW_ARTIFACTS_READINESS = "/api/2.0/mlflow-artifacts/artifacts"
MLFLOW_PROBE_PATHS = frozenset({MLFLOW_LIVENESS, MLFLOW_READINESS, MLFLOW_ARTIFACTS_READINESS})
