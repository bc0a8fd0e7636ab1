"""The programs supervisord runs for mlproxy, what the agent asks MLflow, and the variables the
launcher hands MLflow's process (no imports: the launcher and MLflow's own process read this too)."""

# The services the agent starts and watches, in dependency order; supervisord starts the agent.
SINGLE_USER_SERVICES = ("mlflow", "jupyter")  # MLflow behind Jupyter's login
TEAM_SERVICES = ("mlflow", "service")  # MLflow behind the Hub's login: the service is its front door
DEPENDS_ON: dict[str, tuple[str, ...]] = {"mlflow": (), "jupyter": ("mlflow",), "service": ("mlflow",)}
LABELS = {"mlflow": "MLflow", "jupyter": "Jupyter", "service": "the Hub service"}  # in messages to people
# Set in MLflow's environment in team mode: mlflow_app.py serves MLflow's auth app.
TEAM_ENV = "_MLPROXY_TEAM"
# Set in every Hub user's server (hub.configure): the service's URL. mlproxy's extension there
# redirects /user/NAME/mlflow/ to it and never connects to MLflow itself.
TEAM_URL_ENV = "_MLPROXY_TEAM_URL"
TEAM_PORT_ENV = "_MLPROXY_TEAM_PORT"  # the /proxy/<port>/ route's port (mlflow.port of the team)
# The header the Hub service sets (and no one else can) on every request it relays to MLflow.
USER_HEADER = "X-MLproxy-User"
ADMIN_HEADER = "X-MLproxy-Admin"
PROOF_HEADER = "X-MLproxy-Proof"  # hub/caller.py
# MLflow user names no Hub user can have: the service refuses a Hub user named so. MLflow's auth
# app insists on a bootstrap admin; it gets one of these names and a password nobody knows.
RESERVED_USER_PREFIX = "mlproxy:"
BOOTSTRAP_ADMIN = f"{RESERVED_USER_PREFIX}admin"
AGENT_USER = f"{RESERVED_USER_PREFIX}agent"  # the agent's probes on MLflow's socket
SERVICE_USER_PREFIX = f"{RESERVED_USER_PREFIX}service:"  # + a Hub service's name: never one of the above


def programs(services: tuple[str, ...]) -> tuple[str, ...]:
    return ("agent", *services)

# What the probes ask MLflow (directly and through Jupyter). mlflow_app.py keeps these requests
# out of MLflow's access log, or they would be most of it (5 lines every 2 s).
MLFLOW_LIVENESS = "/health"
MLFLOW_READINESS = "/api/2.0/mlflow/experiments/search?max_results=1"  # touches the store
# Lists the top of the artifact store (a directory listing, or one S3 ListObjects call of at
# most 1000 keys): a database that answers is not enough when the object store is gone.
MLFLOW_ARTIFACTS_READINESS = "/api/2.0/mlflow-artifacts/artifacts"
MLFLOW_PROBE_PATHS = frozenset({MLFLOW_LIVENESS, MLFLOW_READINESS, MLFLOW_ARTIFACTS_READINESS})
# The Hub service answers these itself (under its prefix, no login): alive, whatever MLflow and the
# Hub do; ready, when MLflow answers it on the socket (the Hub's state is the route's business).
SERVICE_LIVENESS = "/_mlproxy/alive"
SERVICE_READINESS = "/_mlproxy/ready"

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
