"""MLflow's app as mlproxy serves it (mlflow_app.py: store checks, error handlers) with team mode's
attribution middlewares installed, but not MLflow's auth app: for tests/integration/test_attribution.py."""

from mlflow.server import app as flask_app  # the Flask app MLflow's FastAPI app mounts
from mlflow.server.fastapi_app import app as fastapi_app

from mlproxy_supervisor.hub.attribution import install
from mlproxy_supervisor.mlflow_app import app

install(flask_app, fastapi_app)  # mlflow_app may have wrapped the FastAPI app (SocketPeersAreLocal)

__all__ = ["app"]
