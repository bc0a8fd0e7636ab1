"""The programs supervisord runs for mlproxy, what the agent asks MLflow, and the variables the
launcher hands MLflow's process (no imports: the launcher and MLflow's own process read this too)."""

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

# The variables `mlflow server` hands its uvicorn child (mlflow/server/constants.py and
# environment_variables.py); the launcher sets them, mlflow_app.py reads them, and a unit test
# checks them against the installed MLflow.
MLFLOW_SERVER_ENV = {
    "backend_store": "_MLFLOW_SERVER_FILE_STORE",
    "registry_store": "_MLFLOW_SERVER_REGISTRY_STORE",
    "artifact_root": "_MLFLOW_SERVER_ARTIFACT_ROOT",
    "serve_artifacts": "_MLFLOW_SERVER_SERVE_ARTIFACTS",
    "artifacts_destination": "_MLFLOW_SERVER_ARTIFACT_DESTINATION",
    "sgi_name": "_MLFLOW_SGI_NAME",
    "boot_id": "_MLFLOW_SERVER_BOOT_ID",
    "in_job_executor": "_MLFLOW_IN_JOB_EXECUTOR",
}
# mlflow_app.py serializes store initialization across workers with this lock file.
STORE_LOCK_ENV = "_MLPROXY_STORE_LOCK"
# Set when MLflow's unix socket is reached only by the stack's own user (single-user mode):
# mlflow_app.py then treats its peers as loopback ones.
SOCKET_PEERS_LOCAL_ENV = "_MLPROXY_SOCKET_PEERS_LOCAL"
