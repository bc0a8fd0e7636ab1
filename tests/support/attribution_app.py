"""MLflow's app as mlproxy serves it (mlflow_app.py: store checks, error handlers) with team mode's
attribution middlewares installed, for uvicorn in tests/integration/test_attribution.py."""

from mlflow.server import app as flask_app  # the Flask app MLflow's ASGI app mounts

from mlproxy_supervisor.hub.attribution import install
from mlproxy_supervisor.mlflow_app import app as mlflow_app

app = install(flask_app, mlflow_app)
