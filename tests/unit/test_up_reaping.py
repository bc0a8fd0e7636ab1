"""`mlproxy up` is a child subreaper: orphans of the stack become its children and must be reaped
while it runs, not only at exit (found in the container: a kernel whose Jupyter was killed stayed
a zombie under `mlproxy up` for the life of the container)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, time
    from mlproxy_supervisor import procfs, up

    def children():
        found = {pid: procfs.stat(pid) for pid in procfs.children(os.getpid())}
        return {pid: info.state for pid, info in found.items() if info}

    up._become_subreaper()
    # Stands in for supervisord: running while orphans come and go, then it exits and its
    # status must still be there for Popen to collect.
    kept = subprocess.Popen(["sh", "-c", "read line; exit 7"], stdin=subprocess.PIPE)
    # Its child outlives it: reparented to us, then exits -> a zombie only we can reap.
    subprocess.run(["sh", "-c", "sleep 0.3 & exit 0"], check=True)
    time.sleep(1.0)
    before = children()
    up._reap(keep=kept.pid)
    after = children()
    kept.stdin.close()
    time.sleep(0.5)
    up._reap(keep=kept.pid)
    kept_after_exit = children()
    print(json.dumps({"kept": kept.pid, "before": before, "after": after,
                      "kept_after_exit": kept_after_exit, "kept_status": kept.wait()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux-only")
def test_adopted_orphans_are_reaped_and_supervisord_is_left_alone():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    kept = str(seen["kept"])
    orphans_before = {pid: state for pid, state in seen["before"].items() if pid != kept}
    assert list(orphans_before.values()) == ["Z"], f"expected one adopted zombie, saw {seen['before']}"
    assert seen["after"] == {kept: "S"}, f"adopted zombie not reaped: {seen['after']}"
    assert seen["kept_after_exit"] == {kept: "Z"}, "supervisord's exit status was collected by the reaper"
    assert seen["kept_status"] == 7
