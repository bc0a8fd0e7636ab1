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
