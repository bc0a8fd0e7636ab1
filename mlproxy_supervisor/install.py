"""`mlproxy install` and `mlproxy uninstall`: the systemd service on a VM or bare metal.

Install is idempotent: each step checks before it acts and says what it did. The Python that runs
`mlproxy install` is the installation the unit runs (its absolute path goes into ExecStart), so it
must be one that user mlproxy can execute and that ProtectHome= does not hide (docs/install-vm.md
installs into /opt/mlproxy).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from . import files, systemd_unit
from .config import ConfigError, Settings, load_settings
from .console import say
from .layout import CONFIG_DIR, CONFIG_FILE, DEFAULT_CONFIG, LOG_DIR, NAME, RUNTIME_DIR, STATE_DIR, UNIT_PATH, USER

# Hidden from the service by ProtectHome=yes: an installation there cannot run under the unit.
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))
PATH_LINK = Path("/usr/local/bin/mlproxy")
# Plain `supervisorctl status` for root and the service user. supervisorctl looks for its file at
# <dirname(dirname(argv[0]))>/etc/supervisord.conf first, then ../supervisord.conf, ./supervisord.conf,
# /etc/supervisord.conf, /etc/supervisor/supervisord.conf (supervisor/options.py). So this
# installation's <venv>/etc/supervisord.conf names the service's socket, and a two-line wrapper
# on PATH execs the venv's supervisorctl by its real path (a symlink would make argv[0]
# /usr/local/bin/..., and supervisorctl would look in /usr/local/etc). Debian's `supervisor`
# package keeps its own supervisorctl and /etc/supervisor/: the wrapper is not put in front of it.
SUPERVISORCTL_LINK = Path("/usr/local/bin/supervisorctl")

class InstallError(Exception):
    """Why install cannot go on, worded for the operator."""


# --- checks ---------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise InstallError(f"must run as root: sudo {sys.executable} -m mlproxy_supervisor install")


def _require_systemd() -> None:
    if not Path("/run/systemd/system").is_dir():
        raise InstallError(
            "systemd is not running on this machine (no /run/systemd/system); "
            "run the stack with `mlproxy up` or the container image instead"
        )
    if shutil.which("systemctl") is None:
        raise InstallError("systemctl is not on PATH")


def _installation_dirs() -> list[Path]:
    """The interpreter as the unit names it, where it really lives, and the installed package."""
    package = Path(__file__).resolve().parent
    return [Path(sys.executable).absolute(), Path(sys.executable).resolve(), package]


def check_location() -> None:
    for path in _installation_dirs():
        for hidden in HIDDEN_BY_PROTECT_HOME:
            if path == hidden or hidden in path.parents:
                raise InstallError(
                    f"this installation lives under {hidden} ({path}), which the service cannot see "
                    f"(ProtectHome=yes hides {', '.join(map(str, HIDDEN_BY_PROTECT_HOME))}).\n"
                    "    fix: install into /opt/mlproxy and run install from there:\n"
                    "         python3 -m venv /opt/mlproxy\n"
                    "         /opt/mlproxy/bin/pip install -c constraints.txt <mlproxy checkout or wheel>\n"
                    "         /opt/mlproxy/bin/mlproxy install --enable --now"
                )


def _first_closed_directory(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to path that the user may not enter."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except OSError:
            return directory
        if not directory.is_dir():
            continue
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == user.pw_gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return directory
    return None


def check_user_can_run(user: pwd.struct_passwd) -> None:
    """Run this installation's Python as the service user, importing mlproxy: the real test."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import mlproxy_supervisor.cli"],
            user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir}, check=False, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode == 0:
            return
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    except OSError as error:  # the exec itself refused, as the kernel refuses it to systemd
        detail = f"{error.strerror}: {error.filename}"
    closed = next((d for p in _installation_dirs() if (d := _first_closed_directory(p, user))), None)
    where = f": {closed} is not open to it (mode {closed.stat().st_mode & 0o777:o})" if closed else ""
    raise InstallError(
        f"user {user.pw_name} cannot run this installation ({sys.executable}){where}\n"
        f"    ({detail})\n"
        "    fix: install into a directory every user can read, e.g. /opt/mlproxy "
        "(python3 -m venv /opt/mlproxy; see docs/install-vm.md)"
    )


# --- steps ----------------------------------------------------------------------------------


def ensure_user() -> pwd.struct_passwd:
    try:
        user = pwd.getpwnam(USER)
        say(f"user {USER} exists (uid {user.pw_uid})")
        return user
    except KeyError:
        pass
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
    command = [
        "useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
        "--shell", nologin, "--comment", "mlproxy service (MLflow and Jupyter)", USER,
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"could not create user {USER}: {result.stderr.strip()}")
    user = pwd.getpwnam(USER)
    say(f"created system user {USER} (uid {user.pw_uid}, home {STATE_DIR})")
    return user


def ensure_directory(path: Path, owner: pwd.struct_passwd | None, mode: int) -> None:
    """Create a missing directory; an existing one keeps its owner and mode."""
    if path.is_dir():
        return
    path.mkdir(parents=True, mode=mode)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    say(f"created {path}")


def ensure_config(user: pwd.struct_passwd) -> None:
    if CONFIG_FILE.exists():
        say(f"kept the existing {CONFIG_FILE}")
        return
    # Root owns it (install runs as root), the service's group reads it: it may hold a database password.
    files.write_atomically(CONFIG_FILE, DEFAULT_CONFIG, 0o640, group=user.pw_gid)
    say(f"wrote the default configuration {CONFIG_FILE}")


def write_unit(settings: Settings) -> bool:
    """Install the unit; True when it changed."""
    text = systemd_unit.render(settings, sys.executable)
    if UNIT_PATH.exists() and UNIT_PATH.read_text() == text:
        say(f"{UNIT_PATH} is up to date")
        return False
    existed = UNIT_PATH.exists()
    files.write_atomically(UNIT_PATH, text, 0o644)
    say(f"{'updated' if existed else 'installed'} {UNIT_PATH} (ExecStart={sys.executable} -m mlproxy_supervisor up)")
    return True


def link_command() -> None:
    """Put `mlproxy` on root's PATH, unless something else already is there."""
    script = Path(sysconfig.get_path("scripts")) / "mlproxy"
    if not script.exists():
        return
    if PATH_LINK.is_symlink() and PATH_LINK.resolve() == script.resolve():
        return
    if PATH_LINK.exists() or PATH_LINK.is_symlink():
        say(f"left {PATH_LINK} alone (it is not a link to {script})")
        return
    PATH_LINK.parent.mkdir(parents=True, exist_ok=True)
    PATH_LINK.symlink_to(script)
    say(f"linked {PATH_LINK} -> {script}")


def supervisorctl_paths() -> tuple[Path, Path]:
    """This installation's supervisorctl and the file it finds first."""
    prefix = Path(sysconfig.get_path("scripts")).parent
    return prefix / "bin" / "supervisorctl", prefix / "etc" / "supervisord.conf"


def supervisorctl_wrapper(supervisorctl: Path) -> str:
    return f"#!/bin/sh\n# Written by `mlproxy install`: this installation's supervisorctl, for the {NAME} service.\nexec {supervisorctl} \"$@\"\n"


def write_supervisorctl_config(settings: Settings) -> None:
    """Let this installation's supervisorctl reach the service, whoever runs it, from anywhere."""
    supervisorctl, config = supervisorctl_paths()
    if not supervisorctl.exists():
        return
    text = (
        f"; Written by `mlproxy install` from {CONFIG_FILE}: plain `supervisorctl` (this installation's)\n"
        f"; talks to the {NAME} service. The socket is 0700: root and user {USER} may use it.\n"
        f"[supervisorctl]\nserverurl=unix://{settings.socket_path}\n"
    )
    if not (config.exists() and config.read_text() == text):
        config.parent.mkdir(mode=0o755, exist_ok=True)
        files.write_atomically(config, text, mode=0o644)
        say(f"wrote {config} (supervisorctl finds the service's socket there)")
    wrapper = supervisorctl_wrapper(supervisorctl)
    if SUPERVISORCTL_LINK.exists() and SUPERVISORCTL_LINK.read_text(errors="replace") == wrapper:
        return
    other = shutil.which("supervisorctl", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if SUPERVISORCTL_LINK.exists() or other is not None:
        say(f"left {other or SUPERVISORCTL_LINK} alone (another supervisor's); for {NAME}: `mlproxy ctl status` or {supervisorctl} status")
        return
    files.write_atomically(SUPERVISORCTL_LINK, wrapper, mode=0o755)
    say(f"wrote {SUPERVISORCTL_LINK} (runs {supervisorctl}: `supervisorctl status` shows {NAME}'s programs)")


def remove_supervisorctl_config() -> None:
    supervisorctl, config = supervisorctl_paths()
    if SUPERVISORCTL_LINK.exists() and SUPERVISORCTL_LINK.read_text(errors="replace") == supervisorctl_wrapper(supervisorctl):
        SUPERVISORCTL_LINK.unlink()
        say(f"removed {SUPERVISORCTL_LINK}")
    if config.exists():
        config.unlink()
        say(f"removed {config}")


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["systemctl", *args], check=False, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise InstallError(f"systemctl {' '.join(args)} failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as error:
        raise InstallError(f"{error}\n    fix the file, then run `mlproxy install` again") from None


def install(enable: bool, now: bool) -> int:
    _require_root()
    _require_systemd()
    check_location()
    user = ensure_user()
    check_user_can_run(user)
    ensure_directory(CONFIG_DIR, None, 0o755)
    ensure_config(user)
    settings = _load(CONFIG_FILE)
    ensure_directory(STATE_DIR, user, 0o750)
    ensure_directory(LOG_DIR, user, 0o750)
    for path in systemd_unit.writable_paths(settings):
        if path != settings.runtime_dir:  # a tmpfs path: made at each start by `mlproxy up`
            ensure_directory(path, user, 0o750)
    changed = write_unit(settings)
    link_command()
    write_supervisorctl_config(settings)
    systemctl("daemon-reload")
    if enable:
        if systemctl("is-enabled", "--quiet", NAME, check=False).returncode != 0:
            systemctl("enable", NAME)
            say(f"enabled {NAME}: it starts at boot")
        else:
            say(f"{NAME} is already enabled")
    active = systemctl("is-active", "--quiet", NAME, check=False).returncode == 0
    if now and not active:
        say(f"starting {NAME} (returns once MLflow answers through Jupyter)...")
        result = systemctl("start", NAME, check=False)
        if result.returncode != 0:
            raise InstallError(
                f"systemctl start {NAME} failed: {result.stderr.strip()}\n"
                f"    see: systemctl status {NAME}; journalctl -u {NAME} -b"
            )
        say(f"{NAME} is running: `mlproxy status`; the URL with the token: `mlproxy url`")
    elif active and changed:
        say(f"{NAME} is running with the previous unit: systemctl restart {NAME}")
    elif active:
        say(f"{NAME} is running")
    elif not now:
        say(f"done; start it with: systemctl start {NAME}")
    return 0


def uninstall(purge: bool) -> int:
    _require_root()
    _require_systemd()
    if UNIT_PATH.exists():
        systemctl("disable", "--now", NAME, check=False)
        UNIT_PATH.unlink()
        systemctl("daemon-reload")
        systemctl("reset-failed", NAME, check=False)
        say(f"stopped {NAME} and removed {UNIT_PATH}")
    else:
        say(f"no {UNIT_PATH}: the unit is not installed")
    script = Path(sysconfig.get_path("scripts")) / "mlproxy"
    if PATH_LINK.is_symlink() and PATH_LINK.resolve() == script.resolve():
        PATH_LINK.unlink()
        say(f"removed {PATH_LINK}")
    remove_supervisorctl_config()
    data = [CONFIG_DIR, STATE_DIR, LOG_DIR]
    elsewhere: list[Path] = []
    if CONFIG_FILE.exists():
        try:
            elsewhere = systemd_unit.writable_paths(load_settings(CONFIG_FILE))
        except ConfigError:
            pass
    if not purge:
        kept = ", ".join(str(p) for p in data + elsewhere if p.exists())
        say(f"kept {kept or 'no data'} and user {USER}; `mlproxy uninstall --purge` removes them")
        return 0
    for path in data:
        if path.exists():
            shutil.rmtree(path)
            say(f"removed {path}")
    for path in elsewhere:
        if path.exists() and path != RUNTIME_DIR:
            say(f"left {path}: the configuration put it there, outside mlproxy's own directories")
    try:
        pwd.getpwnam(USER)
        subprocess.run(["userdel", USER], check=True, capture_output=True)
        say(f"removed user {USER}")
    except KeyError:
        pass
    try:
        grp.getgrnam(USER)
        subprocess.run(["groupdel", USER], check=False, capture_output=True)
    except KeyError:
        pass
    return 0


def run(action: str, enable: bool = False, now: bool = False, purge: bool = False) -> int:
    try:
        return install(enable, now) if action == "install" else uninstall(purge)
    except InstallError as error:
        print(f"mlproxy {action}: {error}", file=sys.stderr)
        return 1
