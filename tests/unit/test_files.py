"""Atomic writes: mode and group first, then the name."""

from __future__ import annotations

import os
import stat

from mlproxy_supervisor import files


def test_an_atomic_write_has_its_mode_and_group_before_it_has_its_name(tmp_path):
    target = tmp_path / "mlproxy.toml"
    target.write_text("old\n")
    group = 65534 if os.geteuid() == 0 else os.getegid()  # nogroup, as root; else our own
    files.write_atomically(target, "new\n", 0o640, group=group)
    info = target.stat()
    assert target.read_text() == "new\n" and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group
    assert [p.name for p in tmp_path.iterdir()] == ["mlproxy.toml"]  # no temporary left behind


def test_a_link_planted_where_the_temporary_goes_is_not_followed(tmp_path):
    """Root writes the service's token into the stack user's directory: a link that user planted at
    the temporary's name must not carry the write (or the mode) to another file."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    victim.chmod(0o644)
    target = tmp_path / "token"
    (tmp_path / f".token.{os.getpid()}.tmp").symlink_to(victim)
    files.write_atomically(target, "secret", 0o600)
    assert victim.read_text() == "untouched\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert target.read_text() == "secret" and not target.is_symlink()


def test_a_token_file_that_is_a_link_is_refused_not_followed(tmp_path):
    from mlproxy_supervisor import credentials

    victim = tmp_path / "victim"
    victim.write_text("not a token of ours\n")
    victim.chmod(0o644)
    (tmp_path / "token").symlink_to(victim)
    try:
        credentials.read_token(tmp_path / "token")
    except credentials.CredentialError as error:
        assert "token file" in str(error)
    else:
        raise AssertionError("read through a link")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
