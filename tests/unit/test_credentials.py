"""Jupyter's token file: created private, reused, a provided token checked."""

from __future__ import annotations

import stat

import pytest

from mlproxy_supervisor import credentials


def test_token_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "token"
    token = credentials.ensure_token(path)
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token, "no trailing newline: Jupyter reads the file verbatim"
    assert credentials.ensure_token(path) == token
    assert credentials.ensure_token(path, "a-provided-token-1234") == "a-provided-token-1234"
    with pytest.raises(credentials.CredentialError, match="too short"):
        credentials.ensure_token(path, "short")
