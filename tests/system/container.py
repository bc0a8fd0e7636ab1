"""A real systemd as PID 1 of a systemd-nspawn container, for the system tier.

The host needs root, `systemd-nspawn` (Debian: systemd-container) and `debootstrap`; its own PID 1
need not be systemd: `--register=no --keep-unit` make nspawn work without the host's D-Bus.

Caches (reused between runs, never modified by a test):
- a debootstrapped Debian rootfs, keyed by suite and package list; every run boots an overlay
  of it whose upper layer is thrown away;
- a wheelhouse of mlproxy's dependencies, keyed by constraints.txt and the dependency list, so
  `pip install` inside the container runs offline (--no-index) and the container can have its
  own network namespace: the stack inside uses the default ports without meeting anything on
  the host.
The project itself is built into a fresh wheel from the working tree on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from mlproxy_supervisor import procfs

CACHE = Path(os.environ.get("MLPROXY_TEST_CACHE", "/var/cache/mlproxy-test"))
SUITE = "bookworm"
# What the container needs and nothing more: systemd as init, and python3 with venv (ensurepip).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
ROOTFS_FORMAT = 2  # bump when the way the rootfs is prepared changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


class HarnessError(Exception):
    pass


def missing_requirements() -> str | None:
    """Why this machine cannot run the tier, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mounts, cgroups)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not Path("/proc/filesystems").read_text().count("overlay"):
        return "the kernel has no overlayfs"
    return None


def log(message: str) -> None:
    print(f"[system] {message}", file=sys.stderr, flush=True)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_rootfs() -> Path:
    """The cached rootfs, built with debootstrap when missing (about 60-80 s)."""
    rootfs = CACHE / f"rootfs-{SUITE}-{_key(SUITE, PACKAGES, ROOTFS_FORMAT)}"
    if (rootfs / "usr/lib/systemd/systemd").exists():
        return rootfs
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = rootfs.with_name(rootfs.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    log(f"building {rootfs} with debootstrap (cached for later runs)")
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), _mirror()],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise HarnessError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (partial / "etc/hostname").write_text("mlproxy-test\n")
    # The installer writes these on a real machine, debootstrap does not; "localhost" must resolve.
    (partial / "etc/hosts").write_text("127.0.0.1\tlocalhost mlproxy-test\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Nothing in the container needs a login prompt on the (passive) console.
    (partial / "etc/systemd/system/getty.target.wants").mkdir(parents=True, exist_ok=True)
    (partial / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
    _publish(partial, rootfs)
    log(f"rootfs built in {time.monotonic() - started:.0f} s")
    return rootfs


def _publish(partial: Path, final: Path) -> None:
    """Rename a finished build into place (atomic: a half-built cache is never used); when a
    concurrent run got there first, keep theirs."""
    try:
        os.replace(partial, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def _dependency_key(repo: Path) -> str:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    constraints = (repo / "constraints.txt").read_text()
    return _key(project["dependencies"], constraints, sys.version_info[:2])


def _pip(*args: str, timeout: float = 900) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise HarnessError(f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def ensure_wheelhouse(repo: Path) -> Path:
    """Wheels for every dependency at the versions constraints.txt pins, built once."""
    wheelhouse = CACHE / f"wheels-{_dependency_key(repo)}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse
    partial = wheelhouse.with_name(wheelhouse.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    log(f"building the wheelhouse {wheelhouse} (cached for later runs)")
    _pip("wheel", "--quiet", "-c", str(repo / "constraints.txt"), "-w", str(partial), str(repo))
    for wheel in partial.glob("mlproxy-*.whl"):
        wheel.unlink()  # the project is built fresh on every run
    (partial / ".complete").touch()
    _publish(partial, wheelhouse)
    log(f"wheelhouse built in {time.monotonic() - started:.0f} s")
    return wheelhouse


def build_project_wheel(repo: Path, into: Path) -> Path:
    """A wheel of the working tree as it is now, built from a copy (the tree is not written to)."""
    source = into / "src"
    files = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, source / name)
    dist = into / "dist"
    _pip("wheel", "--quiet", "--no-deps", "-w", str(dist), str(source))
    (wheel,) = dist.glob("mlproxy-*.whl")
    return wheel


def _own_cgroup(name: str) -> list[Path]:
    """A cgroup of our own in the named systemd hierarchy and the unified one, so nspawn's
    payload/ and supervisor/ subgroups stay inside it (and concurrent containers never share)."""
    made = []
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists():
            path = root / f"mlproxy-test-{name}"
            path.mkdir(exist_ok=True)
            made.append(path)
    return made


def _remove_cgroup_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError as error:
        log(f"could not remove cgroup {path}: {error.strerror}")


def sweep_stale(workdir_prefix: str) -> None:
    """Clean up after a run that was killed before its teardown: its container (every process
    in its cgroup), overlay mount, cgroups and work directory. Only runs whose pid is gone."""
    base = Path(workdir_prefix).parent
    for workdir in base.glob(Path(workdir_prefix).name + "*"):
        pid = workdir.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log(f"removing the leftovers of an interrupted run: {workdir}")
        name = f"mlproxy-{pid}"
        for root in CGROUP_ROOTS:
            for procs in (root / f"mlproxy-test-{name}").rglob("cgroup.procs"):
                for process in procs.read_text().split():
                    try:
                        os.kill(int(process), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        time.sleep(0.5)
        subprocess.run(["umount", "--lazy", str(workdir / "container" / "merged")], check=False, capture_output=True)
        for root in CGROUP_ROOTS:
            _remove_cgroup_tree(root / f"mlproxy-test-{name}")
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}", ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


class Container:
    """One booted container: an overlay of the cached rootfs, removed again by teardown()."""

    def __init__(self, rootfs: Path, workdir: Path, name: str, binds: dict[Path, str]):
        self.rootfs, self.workdir, self.name, self.binds = rootfs, workdir, name, binds
        self.merged = workdir / "merged"
        self.nspawn: subprocess.Popen | None = None
        self.leader: int | None = None
        self.cgroups: list[Path] = []
        self.console = workdir / "console.log"

    # --- lifecycle ------------------------------------------------------------------------
    def boot(self, timeout: float = 60) -> Container:
        upper, work = self.workdir / "upper", self.workdir / "work"
        for directory in (upper, work, self.merged):
            directory.mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={self.rootfs},upperdir={upper},workdir={work}", str(self.merged)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.cgroups = _own_cgroup(self.name)
        argv = [
            "systemd-nspawn", "--quiet", "-D", str(self.merged), "-M", self.name, "--boot",
            "--register=no", "--keep-unit", "--console=passive", "--private-network",
        ]  # fmt: skip
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        cgroups = self.cgroups

        def enter_cgroup():
            for path in cgroups:
                (path / "cgroup.procs").write_text(str(os.getpid()))

        with open(self.console, "wb") as console:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=enter_cgroup,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.leader is None and time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise HarnessError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.console.read_text()[-3000:]}")
            self.leader = self._find_leader()
            time.sleep(0.05)
        if self.leader is None:
            raise HarnessError("no systemd PID 1 appeared in the container")
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=30).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            raise HarnessError(f"container did not boot cleanly (state {state!r}):\n{failed}")
        return self

    def _find_leader(self) -> int | None:
        for pid in procfs.children(self.nspawn.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                nspid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if comm == "systemd" and nspid.split()[-1] == "1":
                return pid
        return None

    def teardown(self, timeout: float = 30) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                log("container did not halt in time: SIGKILL")
                if self.leader:
                    try:
                        os.kill(self.leader, signal.SIGKILL)  # PID 1 of the namespace takes the rest down
                    except ProcessLookupError:
                        pass
                self.nspawn.kill()
                self.nspawn.wait(10)
        if self.merged.exists():
            subprocess.run(["umount", str(self.merged)], check=False, capture_output=True)
        for path in self.cgroups:
            _remove_cgroup_tree(path)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- commands inside ------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command inside (all namespaces of the container's PID 1) with a clean environment."""
        variables = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0"}
        command = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise HarnessError(
                f"inside the container, {' '.join(argv)} exited {result.returncode}:\n"
                f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
            )
        return result

    def host_pid(self, pid: int) -> int:
        """The host's pid of a process that the container calls `pid`."""
        namespace = os.readlink(f"/proc/{self.leader}/ns/pid")
        for entry in procfs.pids():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            nspid = next((line for line in status.splitlines() if line.startswith("NSpid:")), "")
            if nspid.split()[-1:] == [str(pid)]:
                return entry
        raise HarnessError(f"no process {pid} in the container")
