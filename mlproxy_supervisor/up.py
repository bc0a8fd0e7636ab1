"""`mlproxy up`: check, prepare, run supervisord in the foreground, say when the route works.

supervisord runs as our child in its own session, so Ctrl-C reaches only us: we turn SIGINT,
SIGTERM and SIGHUP into one orderly supervisord shutdown (Jupyter stops before MLflow, by
priority). As a child subreaper we also inherit anything a crashed supervisord leaves behind,
and kill it, so no process outlives `up` and both ports end free. However `up` itself ends
(kill -9, the OOM killer, a closed tmux pane), supervisord gets SIGTERM from the kernel (its
parent-death signal) and stops the stack in the same order; under systemd, systemd owns the
stack instead.

`up` is also the stack's outermost watcher (watchdog.py): it replaces a frozen agent and a frozen
supervisord, and under systemd it is what the unit's watchdog watches.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import credentials, launch, preflight, procfs, rpc, running, supervisord_conf, traffic_gate, watchdog
from .agent.notify import Notifier
from .config import ENV_PREFIX, RESOLVED_ENV, Settings, write_resolved
from .console import say, started_by_systemd
from .exits import EXIT_CONFIG, EXIT_FAILED
from .files import current_user
from .programs import LABELS
from .rpc import Supervisor, SupervisorUnavailable
from .status_document import StatusDocument
from .store import postgres, schema
from .timings import ORPHAN_GRACE, SUPERVISORD_START_SILENCE, WATCH_PERIOD

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
# Read here and never passed on: a JUPYTER_TOKEN given to `up` is stored in the token file,
# which is the one source the programs read.
CONSUMED_ENV = (credentials.TOKEN_ENV,)
# An agent that runs but writes no status document for this long is stuck (it writes its first one
# within a loop step, about a second); `up` then stops with the agent's last log lines.
AGENT_SILENCE = 30.0
# supervisord logs "CRIT Server 'unix_http_server' running without any HTTP authentication
# checking" whenever its socket has no password. Ours is protected by the file system instead
# (0700 directory and socket): say so right after it, where an operator reads the CRIT.
SOCKET_NOTE = (
    "supervisord's CRIT about 'running without any HTTP authentication checking' is expected: its "
    "socket {socket} is mode 0700, so only user {user} and root can use it"
)


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init instead


def _die_with_parent(parent: int):
    """supervisord's preexec_fn: SIGTERM (an ordered stop) when `up` ends, however it ends. The
    signal follows the thread that forked, and `up` is single-threaded when it spawns."""

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None  # not Linux

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # `up` died before the signal was armed
            os._exit(1)

    return arm


def _kill_orphans(grace: float = ORPHAN_GRACE) -> None:
    """Anything still our child after supervisord exited was orphaned by it: end it."""
    orphans = procfs.children(os.getpid())
    if not orphans:
        return
    say(f"stopping {len(orphans)} process(es) left behind by supervisord")
    for pid in orphans:
        try:
            group = os.getpgid(pid)
            os.killpg(group, signal.SIGTERM)
            os.killpg(group, signal.SIGCONT)  # a frozen one acts on it too (or SIGKILL gets it)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and procfs.children(os.getpid()):
        _reap()
        time.sleep(0.1)
    for pid in procfs.children(os.getpid()):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(0.1)
    _reap()


def _reap(keep: int | None = None) -> None:
    """Reap exited children: orphans reparented to us (a kernel whose Jupyter was killed, say)
    and, once supervisord is gone, its leftovers. `keep` (supervisord, whose exit status Popen
    collects) is never reaped. A subreaper that never waits leaves zombies for as long as the
    stack runs."""
    while True:
        try:
            # WNOWAIT: look at the first exited child without collecting it.
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return  # nothing exited, or supervisord did: the loop's poll() sees it
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            pass


def _end_adopted_orphans(supervisord_pid: int, ended: set[int]) -> None:
    """A child of ours that is not supervisord was orphaned while the stack runs: a kernel whose
    Jupyter was killed, typically. No server will ever reattach it, and a kernel orphaned while
    it was still starting never notices (ipykernel then waits for PID 1 to adopt it): end it."""
    for pid in procfs.children(os.getpid()):
        if pid == supervisord_pid or pid in ended:
            continue
        ended.add(pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _ended(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def print_url(settings: Settings, token: str | None, seconds: float) -> None:
    if settings.team_mode:
        say(f"ready in {seconds:.1f} s: MLflow for the Hub's users at {settings.team_url} (they log in at the Hub)")
        return
    base = settings.jupyter_local_url
    if token is None:
        say(f"ready in {seconds:.1f} s: MLflow at {base}/mlflow/ (token: `mlproxy url`)")
    else:
        say(f"ready in {seconds:.1f} s; open MLflow inside Jupyter at:\n\n    {base}/mlflow/?token={token}\n")


class Progress:
    """What `up` says while the stack comes up: one line per step, each failure's cause once."""

    def __init__(self, settings: Settings, started: float):
        self.settings = settings
        self.started = started
        self.done: set[str] = set()
        self.causes: set[str] = set()
        self.announced = False
        self.silent_since: float | None = None

    def step(self, what: str) -> None:
        if what not in self.done:
            self.done.add(what)
            say(f"{what} ({time.monotonic() - self.started:.1f} s)")

    def update(self, status: StatusDocument) -> bool:
        """Report news; True the first time the stack is ready (time to print the URL)."""
        self.silent_since = None
        for name, service in status.services.items():
            if service.phase == "ready":
                self.step(f"{name} ready")
            error = service.last_error
            if service.phase == "failed" and error is not None and error.message not in self.causes:
                self.causes.add(error.message)
                retry = next(
                    (e.detail for e in reversed(status.events) if e.service == name and e.event == "fatal"), ""
                )
                say(
                    f"{name} failed: {retry or error.message} (the agent keeps retrying; `mlproxy status` shows its log)"
                )
        if status.overall == "ready" and not self.announced:
            self.announced = True
            return True
        return False

    def agent_silent(self) -> str | None:
        """Why the agent never reported, once it is clear it will not: it died for good, or it
        runs without writing the status document for AGENT_SILENCE seconds."""
        try:
            supervisor = Supervisor(self.settings.socket_path, timeout=2)
            agent = supervisor.processes().get("agent")
            tail = supervisor.tail("agent").strip().splitlines()[-10:] if agent else []
        except SupervisorUnavailable:
            return None
        if agent is None:
            return None
        now = time.monotonic()
        if agent.state not in ("FATAL", "BACKOFF", "EXITED"):
            self.silent_since = self.silent_since or now
            if now - self.silent_since < AGENT_SILENCE:
                return None
        elif agent.state == "BACKOFF":
            return None  # supervisord retries it; FATAL follows if it keeps failing
        last = "\n    | ".join(tail) or "(nothing in its log)"
        return f"the health agent never reported (it is {agent.state}); its last log lines:\n    | {last}"


def _should_print_token(token_generated: bool) -> bool:
    """The token goes to a terminal, or once to a container's log when it was just generated;
    never to systemd's journal (read `mlproxy url` there)."""
    if started_by_systemd():
        return False
    return sys.stdout.isatty() or token_generated


# Everything the stack creates (state directory, mlflow.db, logs, artifacts) is its user's alone:
# supervisord and every program inherit this from up.
STACK_UMASK = 0o077


def prepare_runtime(settings: Settings) -> Path:
    """Resolve the configuration once, into the 0700 runtime directory: the resolved file (the
    agent, Jupyter's extension and later CLI calls read it; it names this `up`, for `mlproxy
    stop`), the launch files, supervisord's configuration. Returns supervisord's configuration file."""
    write_resolved(settings, up={"pid": os.getpid(), "systemd": started_by_systemd()})
    traffic_gate.close(settings.traffic_gate_file)  # an earlier stack's: this MLflow is not ready yet
    watchdog.forget(settings)  # an earlier stack's heartbeat and replacements
    settings.programs_dir.mkdir(mode=0o700, exist_ok=True)
    launch.write_launch_files(settings)
    if settings.team_mode:
        from .hub import mlflow_auth

        mlflow_auth.write_config(settings)
    return supervisord_conf.write_config(settings)


def child_environment(settings: Settings) -> dict[str, str]:
    """The stack's environment: ours, minus what was resolved already (MLPROXY_*, the token),
    plus where the resolved configuration is."""
    env = {k: v for k, v in os.environ.items() if k not in CONSUMED_ENV and not k.upper().startswith(ENV_PREFIX)}
    env[RESOLVED_ENV] = str(settings.resolved_file)
    return env


class CannotStart(Exception):
    """Why the stack cannot start, one line per cause; `code` is what `up` exits with."""

    def __init__(self, *causes: object, code: int = EXIT_CONFIG):
        super().__init__(*causes)
        self.causes = [str(cause) for cause in causes]
        self.code = code


@dataclass(frozen=True)
class Prepared:
    """A stack ready for supervisord: its configuration file, environment and token."""

    conf: Path
    env: dict[str, str]
    token: str
    token_generated: bool  # first start: the URL with the token may go to a container's log


def prepare(settings: Settings, notifier: Notifier) -> Prepared:
    """Everything before supervisord starts: the checks, the PostgreSQL schema, the token, the
    runtime files. Raises CannotStart, having started nothing."""
    os.umask(STACK_UMASK)
    problems = preflight.check_all(settings)
    if problems:
        # Only a cause that may pass by itself is worth systemd's restart; the rest need a person.
        raise CannotStart(*problems, code=EXIT_FAILED if all(problem.may_pass for problem in problems) else EXIT_CONFIG)
    if settings.state_dir.stat().st_uid == os.geteuid():
        settings.state_dir.chmod(0o700)  # made before this umask (by hand, an older mlproxy): close it
    if postgres.is_postgres(settings.mlflow.backend_store_uri):
        # Under systemd: the start may wait on another host's upgrade; it is alive, not hung.
        keep_alive = lambda: notifier.send(f"WATCHDOG=1\nEXTEND_TIMEOUT_USEC={30 * 10**6}")  # noqa: E731
        try:
            schema.prepare_postgres(settings, say, keep_alive, preflight.as_this_user())
        except schema.SchemaError as error:
            raise CannotStart(error) from None
    try:
        if settings.team_mode:
            from .hub import mlflow_auth

            # Team mode: no Jupyter token; users log in at the Hub, and the service holds its own.
            token, token_generated = mlflow_auth.ensure_secrets(settings), False
        else:
            provided = os.environ.get(credentials.TOKEN_ENV)
            token_generated = provided is None and not settings.jupyter.token_file.exists()
            token = credentials.ensure_token(settings.jupyter.token_file, provided)
    except credentials.CredentialError as error:
        raise CannotStart(error, code=EXIT_FAILED) from None
    settings.status_file.unlink(missing_ok=True)  # a previous run's status is not this one's
    return Prepared(prepare_runtime(settings), child_environment(settings), token, token_generated)


class Supervision:
    """supervisord as our child until it exits: SIGINT, SIGTERM and SIGHUP become one ordered stop,
    the agent's status document becomes progress lines and the URL, orphans are ended."""

    def __init__(self, settings: Settings, prepared: Prepared, notifier: Notifier):
        self.settings = settings
        self.prepared = prepared
        self.notifier = notifier
        self.stopping = False
        self.failed = False  # the start failed (the agent never reported)
        self.started = self.spawned = time.monotonic()
        self.supervisord = self._spawn()
        self.watcher = watchdog.Watcher(settings, say)
        self.replaced: set[int] = set()  # supervisords we killed as frozen: their exit is no failure
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.request_stop)
        # A second shell finds this stack with no configuration. Under systemd the unit's own
        # configuration (/etc/mlproxy) names it already, and the service user's home is no place for it.
        self.record = None if started_by_systemd() else running.record(settings)

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.prepared.conf)],
            env=self.prepared.env,
            start_new_session=True,  # Ctrl-C reaches us only; we ask supervisord to stop in order
            # Under systemd the unit owns the stack (and stops it in order); elsewhere the stack ends with us.
            preexec_fn=None if started_by_systemd() else _die_with_parent(os.getpid()),
        )

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stopping:
            self.stopping = True
            order = ", then ".join(LABELS[name] for name in reversed(self.settings.services))  # supervisord's priorities
            say(f"stopping ({order})...")
            self.notifier.status(f"stopping: {order}")
            self.supervisord.send_signal(signal.SIGTERM)

    def _wake(self, progress: Progress) -> bool:
        """Any call ends supervisord's wait of a second before it starts its programs (measured
        in docs/benchmarks.md): talk to it as soon as its socket answers."""
        if not rpc.answers(self.settings.socket_path):
            return False
        progress.step("supervisord answers")
        if self.settings.log_target != "files":  # where supervisord's log is shown to people
            say(SOCKET_NOTE.format(socket=self.settings.socket_path, user=current_user()))
        return True

    def _report(self, progress: Progress) -> None:
        status = StatusDocument.read(self.settings.status_file)
        if status is None:
            silence = progress.agent_silent()
            if silence is not None:
                print(f"mlproxy: cannot start: {silence}", file=sys.stderr, flush=True)
                self.request_stop()
                self.failed = True
        elif progress.update(status):
            token = self.prepared.token if _should_print_token(self.prepared.token_generated) else None
            print_url(self.settings, token, time.monotonic() - self.started)

    def _replace_supervisord(self, silence: float) -> None:
        """supervisord is frozen: kill it, end its programs (now our children), start it again on
        the same configuration. Its new agent starts MLflow and Jupyter; the traffic gate stays
        closed until that MLflow is ready."""
        frozen = self.supervisord
        detail = f"{watchdog.CAUSES['supervisord']} for {silence:.0f} s"
        say(f"supervisord (pid {frozen.pid}) is frozen: {detail}; replacing it and the programs it ran")
        self.notifier.send(f"STATUS=restarting: supervisord frozen ({detail})")
        self.replaced.add(frozen.pid)
        frozen.kill()
        try:
            frozen.wait(ORPHAN_GRACE)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a dead mount): it dies when that returns
            say(f"supervisord (pid {frozen.pid}) does not die yet; starting a new one anyway")
        _kill_orphans()
        traffic_gate.close(self.settings.traffic_gate_file)
        self.settings.status_file.unlink(missing_ok=True)  # the old agent's view, not the new one's
        self.watcher.record("supervisord", frozen.pid, detail)
        if self.stopping:
            return  # asked to stop meanwhile: the loop ends on the dead one
        self.supervisord, self.spawned = self._spawn(), time.monotonic()
        if self.stopping:  # asked while it spawned: request_stop signalled the dead one
            self.supervisord.send_signal(signal.SIGTERM)

    def _watch(self) -> bool:
        """One look at supervisord and the agent; True when supervisord was replaced."""
        silence = self.watcher.supervisord_silence()
        if silence is not None:
            self._replace_supervisord(silence)
            return True
        self.watcher.check_agent()
        return False

    def watch(self) -> int:
        """Until supervisord exits; then end what it left. Returns up's exit status."""
        progress = Progress(self.settings, self.started)
        woken = False
        ended_orphans: set[int] = set()
        next_orphan_check = next_watch = 0.0
        pinged = 0.0
        while self.supervisord.poll() is None:
            now = time.monotonic()
            if self.notifier.watchdog_interval and now - pinged >= self.notifier.watchdog_interval:
                self.notifier.watchdog()  # systemd watches this loop: a frozen `up` gets the unit restarted
                pinged = now
            if not woken and not self.stopping:
                woken = self._wake(progress)
                if woken:
                    self.watcher.reset()  # judged from its first answer on
                elif self.replaced and time.monotonic() - self.spawned > SUPERVISORD_START_SILENCE:
                    # A replacement that never answers (the same dead mount): replace it again.
                    self._replace_supervisord(time.monotonic() - self.spawned)
                time.sleep(0.02)
                continue
            time.sleep(0.1)
            _reap(keep=self.supervisord.pid)
            if self.stopping:
                continue
            if time.monotonic() >= next_orphan_check:
                _end_adopted_orphans(self.supervisord.pid, ended_orphans)
                next_orphan_check = time.monotonic() + 1.0
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + WATCH_PERIOD
                if self._watch():
                    announced = progress.announced  # the URL stays what it was
                    progress, woken = Progress(self.settings, time.monotonic()), False
                    progress.announced = announced
                    continue
            self._report(progress)
        code = 0 if self.stopping and self.supervisord.pid in self.replaced else self.supervisord.returncode
        if not self.stopping:
            self.notifier.status(f"down: supervisord {_ended(code)}; stopping what it left")
        _kill_orphans()
        self.settings.resolved_file.unlink(missing_ok=True)  # no running stack to describe any more
        watchdog.forget(self.settings)
        running.forget(self.record)
        say("stopped" if code == 0 else f"supervisord {_ended(code)}")
        return EXIT_FAILED if self.failed and code == 0 else code


def _new_store(settings: Settings) -> bool:
    """Whether this start makes a new MLflow store: no SQLite database yet, or no state directory
    at all (a database server's store is the server's business)."""
    database = settings.sqlite_database
    try:
        return not settings.state_dir.exists() or (database is not None and not database.exists())
    except OSError:  # a state directory this user may not enter: preflight says so, with the fix
        return False


def _in_container() -> bool:
    return Path("/run/.containerenv").exists() or Path("/.dockerenv").exists()


def announce(settings: Settings, new_store: bool) -> None:
    """Where this stack's configuration and data are: a typo in either shows at once."""
    source = "defaults" if settings.source == "built-in defaults" else settings.source
    say(f"configuration: {source}")
    say(f"state directory: {settings.state_dir}" + (" (new store: no runs yet)" if new_store else ""))
    if os.geteuid() == 0 and new_store and not started_by_systemd() and not _in_container():
        say("running as root; on a server prefer `mlproxy install`, which runs the stack as user mlproxy")


def run(settings: Settings) -> int:
    # Under systemd, StatusText= is the agent's; what only `up` sees (a stop asked for,
    # supervisord gone) it says itself, so the status is never a stale "ready".
    notifier = Notifier()
    announce(settings, _new_store(settings))
    try:
        prepared = prepare(settings, notifier)
    except CannotStart as refusal:
        for cause in refusal.causes:
            print(f"mlproxy: cannot start: {cause}", file=sys.stderr)
        return refusal.code
    _become_subreaper()
    return Supervision(settings, prepared, notifier).watch()
