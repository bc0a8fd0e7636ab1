"""The code passes the linter configured in pyproject.toml (likely bugs, unused names, imports)."""

import subprocess
import sys

from tests.stack import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
