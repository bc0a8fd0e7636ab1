"""An older MLflow from PyPI in a venv of its own, to make a real old database with.

`python -m tests.support.old_mlflow` builds the venv ahead of time (scripts/setup does); the
upgrade test builds it itself when it is missing. Cached like the system tier's rootfs: in
$MLPROXY_TEST_CACHE (/var/cache/mlproxy-test), keyed by the version and Python's, and never
modified once complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# MLflow 2.0.1 (November 2022), its schema 97727af70f4d many migrations behind ours. mlflow-skinny
# plus what its server needs (Flask behind gunicorn, SQLAlchemy + alembic), at the versions its
# requirements allowed then: 88 MB, about 40 s to install, where the full `mlflow==2.0.1` (pandas,
# scipy, pyarrow, scikit-learn, ...) is 925 MB and took 6 minutes.
VERSION = "2.0.1"
PACKAGES = (
    f"mlflow-skinny=={VERSION}", "Flask==2.2.5", "Werkzeug==2.2.3", "gunicorn==20.1.0",
    "SQLAlchemy==1.4.54", "alembic==1.8.1", "querystring-parser==1.2.4",
)  # fmt: skip
CACHE = Path(os.environ.get("MLPROXY_TEST_CACHE", "/var/cache/mlproxy-test"))
if not os.access(CACHE if CACHE.exists() else CACHE.parent, os.W_OK):  # not root: a cache of this user's
    CACHE = Path.home() / ".cache" / "mlproxy-test"


def _key() -> str:
    return hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:8]


def venv() -> Path:
    """The venv's directory, built with pip when missing (about 40 s)."""
    path = CACHE / f"old-mlflow-{VERSION}-{_key()}-py{sys.version_info.major}{sys.version_info.minor}"
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)  # a build that was interrupted
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    result = subprocess.run(
        [str(path / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
        check=False, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise RuntimeError(f"pip install {' '.join(PACKAGES)} failed:\n" + "\n".join(lines[-40:]))
    (path / ".complete").touch()
    return path


if __name__ == "__main__":
    print(venv())
