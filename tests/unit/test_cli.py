"""CLI conventions: --version, a description on every --help, global options before the
subcommand, and a quiet exit when the reader of a pipe goes away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlproxy_supervisor.cli import build_parser


def mlproxy(*args: str, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROXY_")}
    env["HOME"] = str(cwd)
    return subprocess.run([sys.executable, "-m", "mlproxy_supervisor", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False, **kwargs)  # fmt: skip


def test_version(tmp_path):
    result = mlproxy("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("mlproxy 0.")


def test_every_subcommand_describes_itself():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.description, f"`mlproxy {name} --help` has no description"


@pytest.mark.parametrize("before", [True, False])
def test_config_before_or_after_the_subcommand(tmp_path, before):
    path = tmp_path / "x.toml"
    path.write_text('runtime_dir = "/tmp/mlproxy-cli-test"\n[jupyter]\nport = 18123\n')
    args = ["--config", str(path), "config", "check"] if before else ["config", "check", "--config", str(path)]
    result = mlproxy(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[jupyter]\nport = 'abc'\n")
    args = ["--config", str(broken), "config", "check"] if before else ["config", "check", "--config", str(broken)]
    assert mlproxy(*args, cwd=tmp_path).returncode == 2


def test_closed_pipe_ends_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "mlproxy_supervisor", "config", "reference"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)  # fmt: skip
    process.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) != 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_the_internal_listener_is_not_offered_to_people(tmp_path):
    listing = mlproxy("--help", cwd=tmp_path).stdout
    assert "_logforward" not in listing and "SUPPRESS" not in listing
    assert "  logs " in listing and "  stop " in listing and "  env " in listing
