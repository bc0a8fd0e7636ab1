"""The team tier's harness: a real JupyterHub (PAM, local processes as real Unix users) behind an
external configurable-http-proxy, on ports and a directory of its own.

    hub = Hub(extra_config="import mlproxy_supervisor.hub; mlproxy_supervisor.hub.configure(c)").start()
    try:
        session = hub.login("alice")          # the Hub's login form, over HTTP, through the proxy
        hub.spawn("alice", session=session)
        status, stdout = hub.execute("alice", "import getpass; print(getpass.getuser())")
    finally:
        hub.stop()                            # raises if any process it started is left

Every process the harness starts, directly (the proxy, the Hub) or through the Hub (users' servers
and their kernels), carries MLPROXY_HUB_HARNESS=<its directory> in its environment: that is how
stop() finds the process groups to end and proves that none is left. Needs root (users, setuid).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests
import websocket

from tests.stack import ROOT, port_is_free
from tests.support.ports import free_port

VENV_BIN = Path(sys.prefix) / "bin"
SINGLEUSER = VENV_BIN / "jupyterhub-singleuser"
JUPYTERHUB = VENV_BIN / "jupyterhub"
# scripts/setup runs `npm ci` in tests/team (package.json and its lock file pin 5.3.0).
PROXY = ROOT / "tests" / "team" / "node_modules" / ".bin" / "configurable-http-proxy"

USERS = ("alice", "bob", "carol")
MARKER = "_MLPROXY_HUB_HARNESS"  # no MLPROXY_ prefix: mlproxy refuses unknown MLPROXY_* variables
SERVICE = "mlproxy-harness"
# Scopes of the harness's service token: create users, start/stop/read their servers (with the
# spawner's state), make tokens for them, read the Hub and its proxy's routes.
SERVICE_SCOPES = ["admin:users", "admin:servers", "tokens", "read:hub", "proxy"]
# Serialises password changes and logins between harnesses on this machine: the users are shared,
# so one harness's new password must not land between another's chpasswd and its login POST.
USERS_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "mlproxy-team-users.lock"

# --- what the tier needs ------------------------------------------------------------------
SETUP_HINT = (
    "scripts/setup (as root) provides the team tier: Debian's nodejs and npm, configurable-http-proxy 5.3.0 "
    "(npm ci in tests/team), and jupyterhub 6.1.1 in the venv (the `team` extra)"
)


def missing_requirements() -> list[str]:
    """What this machine lacks for the team tier, in words; empty when all is there."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (Unix users are created and servers run setuid as them)")
    for tool in ("useradd", "chpasswd", "node"):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` on PATH")
    if not PROXY.exists():
        missing.append(f"configurable-http-proxy ({PROXY.relative_to(ROOT)})")
    for script in (JUPYTERHUB, SINGLEUSER):
        if not script.exists():
            missing.append(f"{script.name} in the venv (pip install -e '.[team]')")
    return missing


def user_cannot_run_the_venv(user: str) -> str | None:
    """Why `user` cannot run this venv's Python and import what their server needs (None if they
    can). Their servers run as them, from this venv, importing this repository (editable)."""
    account = pwd.getpwnam(user)
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import jupyterhub.singleuser, mlproxy_supervisor"],
            user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd=account.pw_dir,
            env={"PATH": "/usr/bin:/bin", "HOME": account.pw_dir}, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    except OSError as error:  # the exec itself was refused
        detail = f"{error.strerror}: {error.filename}"
    else:
        if result.returncode == 0:
            return None
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    closed = closed_to_others([Path(sys.executable).resolve(), Path(sys.base_prefix), Path(sys.prefix), SINGLEUSER, ROOT])
    return f"user {user} cannot run {sys.executable} ({detail}); closed to other users: {', '.join(closed) or 'nothing found'}"


def closed_to_others(paths: list[Path]) -> list[str]:
    """The directories on the way to `paths` that other users may not enter, and the files they may not read."""
    closed = []
    for path in paths:
        for each in [*reversed(path.parents), path]:
            mode = each.stat().st_mode
            wanted = 0o001 if each.is_dir() else 0o004
            if not mode & wanted and f"{each} ({oct(mode & 0o777)})" not in closed:
                closed.append(f"{each} ({oct(mode & 0o777)})")
    return closed


# --- Unix users ---------------------------------------------------------------------------
@contextlib.contextmanager
def users_lock():
    with open(USERS_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}"


def ensure_user(name: str) -> pwd.struct_passwd:
    """The Unix user `name` with a home directory, created if missing (kept between runs)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", name])
        return pwd.getpwnam(name)


def set_password(name: str, password: str) -> None:
    _run(["chpasswd"], stdin=f"{name}:{password}\n")  # on stdin: never in an argv that /proc shows


# --- processes ----------------------------------------------------------------------------
def marked_processes(marker_value: str) -> dict[int, dict]:
    """Processes whose environment carries MARKER=marker_value: pid -> uid, process group, argv."""
    wanted = f"{MARKER}={marker_value}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if wanted not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(entry)] = {"uid": os.stat(f"/proc/{entry}").st_uid, "pgid": os.getpgid(int(entry)), "argv": argv}
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group; zombies do not count (an exited child of ours stays
    in its group until reaped, and kill(-pgid, 0) still succeeds on it)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (children first), across sessions and process groups."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop(0))
        todo.extend(children.get(found[-1], []))
    return found


def end_group(pgid: int, timeout: float = 30, leader: subprocess.Popen | None = None) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after `timeout`; reaps the
    group's leader when it is our child."""

    def gone_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if leader is not None:
                leader.poll()
            if not group_members(pgid):
                return True
            time.sleep(0.2)
        return False

    for sig, seconds in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if gone_within(seconds):
            break
    if leader is not None:
        leader.wait(10)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5, failed=None, details=lambda: ""):
    """Polls predicate() until it returns something truthy; AssertionError after `timeout` s or as
    soon as failed() says why it never will."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        reason = failed() if failed else None
        if reason:
            raise AssertionError(f"{what}: {reason}\n{details()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(interval)


# --- the harness --------------------------------------------------------------------------
PASSWORDS: dict[str, str] = {}  # user -> this test process's password for them (see Hub.start)


class Hub:
    """JupyterHub 6 behind an external configurable-http-proxy, each in a process group of its own.

    extra_config: Python appended to the harness's jupyterhub_config.py (the product's lines).
    env: variables set for the Hub process (on top of the harness's environment, less MLPROXY_*).
    """

    def __init__(self, extra_config: str = "", env: dict[str, str] | None = None, users: tuple[str, ...] = USERS):
        self.users = tuple(users)
        self.extra_config, self.extra_env = extra_config, dict(env or {})
        self.directory = Path(tempfile.mkdtemp(prefix="mlproxy-hub-"))  # 0700: config holds the service token
        self.public_port, self.proxy_api_port, self.hub_port = free_port(), free_port(), free_port()
        self.proxy_token, self.service_token = secrets.token_hex(32), secrets.token_hex(32)
        self.config_file = self.directory / "jupyterhub_config.py"
        self.proxy_log, self.hub_log = self.directory / "proxy.log", self.directory / "hub.log"
        self.proxy: subprocess.Popen | None = None
        self.hub: subprocess.Popen | None = None
        self._passwords = PASSWORDS
        self._user_tokens: dict[str, str] = {}
        self._kernels: dict[str, str] = {}
        self._groups_seen: set[int] = set()
        self._admin = requests.Session()
        self._admin.headers["Authorization"] = f"token {self.service_token}"

    # --- addresses ---------------------------------------------------------------------
    @property
    def base(self) -> str:
        """The public URL: the proxy's port, where users and tests come in."""
        return f"http://127.0.0.1:{self.public_port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def api(self, path: str) -> str:
        return self.url(f"hub/api/{path.lstrip('/')}")

    @property
    def admin(self) -> requests.Session:
        """A session with the harness service's token (admin over users, servers and tokens)."""
        return self._admin

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 180) -> Hub:
        """Users ready (fresh random passwords), the proxy then the Hub started; returns once the Hub
        answers /hub/api through the proxy."""
        with users_lock():
            for name in self.users:
                ensure_user(name)
                # One password per user and test process: every Hub of this process (a session's
                # and a test's own) logs the same user in with it. Random per process.
                set_password(name, self._passwords.setdefault(name, secrets.token_urlsafe(18)))
        refused = user_cannot_run_the_venv(self.users[0])
        assert refused is None, f"{refused}\n{SETUP_HINT}; it makes .venv from a Python every user can run"
        self.config_file.write_text(self._config())
        self._start_proxy(timeout)
        self._start_hub(timeout)
        return self

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROXY_")}
        env[MARKER] = str(self.directory)
        return env

    def _start_proxy(self, timeout: float) -> None:
        env = {**self._environment(), "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}
        hub = f"http://127.0.0.1:{self.hub_port}"
        command = [
            str(PROXY), "--ip", "127.0.0.1", "--port", str(self.public_port),
            "--api-ip", "127.0.0.1", "--api-port", str(self.proxy_api_port),
            "--default-target", hub, "--error-target", f"{hub}/hub/error", "--log-level", "info",
        ]  # fmt: skip
        self.proxy = self._popen(command, env, self.proxy_log)

        def routes_answer():
            try:
                return requests.get(f"http://127.0.0.1:{self.proxy_api_port}/api/routes",
                                    headers={"Authorization": f"token {self.proxy_token}"}, timeout=5).status_code == 200  # fmt: skip
            except requests.RequestException:
                return False

        wait_until(routes_answer, timeout, "configurable-http-proxy's API", failed=lambda: self._exited(self.proxy), details=self.tails)

    def _start_hub(self, timeout: float) -> None:
        env = {**self._environment(), **self.extra_env}
        self.hub = self._popen([str(JUPYTERHUB), "-f", str(self.config_file)], env, self.hub_log)

        def answers_through_proxy():
            try:
                answer = requests.get(self.api(""), timeout=5)
                return answer.status_code == 200 and "version" in answer.json()
            except (requests.RequestException, ValueError):
                return False

        wait_until(answers_through_proxy, timeout, "the Hub's /hub/api through the proxy", failed=lambda: self._exited(self.hub), details=self.tails)

    def _popen(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as output:  # the child keeps its own descriptor
            process = subprocess.Popen(command, env=env, cwd=self.directory, stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self._groups_seen.add(process.pid)
        return process

    @staticmethod
    def _exited(process: subprocess.Popen | None) -> str | None:
        if process is not None and process.poll() is not None:
            return f"{Path(process.args[0]).name} exited with status {process.returncode}"
        return None

    def restart_hub(self, timeout: float = 180) -> None:
        """Stops the Hub process only (the proxy, its routes and users' servers stay), starts it
        again, and returns once it answers through the proxy and sees every server that was ready
        before as ready again."""
        with self.hub_down(timeout):
            pass

    @contextlib.contextmanager
    def hub_down(self, timeout: float = 180):
        """The Hub process stopped (the proxy, its routes and users' servers stay) for the body of
        the with-block, then started again as restart_hub() does."""
        running = [name for name in self.users if self._server(name).get("ready")] if self.hub else []
        self._stop_hub()
        try:
            yield
        finally:
            self._start_hub(timeout)
            for name in running:
                wait_until(lambda name=name: self._server(name).get("ready"), timeout,
                           f"{name}'s server ready again after the Hub's restart", details=self.tails)  # fmt: skip

    def _stop_hub(self, timeout: float = 60) -> None:
        if self.hub is not None:
            # The Hub's children (users' servers, managed services) live in groups of their own,
            # and managed services do not inherit the marker: note their groups for stop()'s check.
            for pid in descendants(self.hub.pid):
                with contextlib.suppress(ProcessLookupError):
                    self._groups_seen.add(os.getpgid(pid))
            end_group(self.hub.pid, timeout, leader=self.hub)
            self.hub = None

    def stop(self, timeout: float = 120) -> None:
        """Stops users' servers through the Hub (so kernels end cleanly), then the Hub and the proxy,
        then ends the process group of anything still carrying the harness's marker or left in a
        group the harness saw. Raises AssertionError, with the logs' tails, if the Hub could not
        stop a server, if the Hub left a process of its servers behind, or if any process or port
        outlives it all. Servers outliving a Hub that was already down are expected (they survive
        the Hub by design) and just ended. Idempotent. The directory is removed when all went
        well, kept (and named in the message) otherwise."""
        problems = []
        hub_was_running = self.hub is not None and self.hub.poll() is None
        if hub_was_running:
            users = []
            try:
                users = [model["name"] for model in self.admin.get(self.api("users"), timeout=30).json() if model.get("servers")]
            except (requests.RequestException, ValueError) as error:
                problems.append(f"listing the Hub's users: {error}")
            for name in users:
                try:
                    self.stop_server(name, timeout)
                except (AssertionError, requests.RequestException) as error:
                    problems.append(f"stopping {name}'s server: {error}")
        self._stop_hub()
        if self.proxy is not None:
            end_group(self.proxy.pid, leader=self.proxy)
            self.proxy = None
        self._admin.close()
        leftovers = self.processes()
        leftover_groups = {info["pgid"] for info in leftovers.values()} | {g for g in self._groups_seen if group_members(g)}
        for pgid in leftover_groups:
            self._groups_seen.add(pgid)
            end_group(pgid)
        if hub_was_running and leftover_groups:
            problems.append(f"left running after the Hub stopped its servers, ended by process group {sorted(leftover_groups)}: "
                            + "; ".join(f"{pid} (uid {info['uid']}): {info['argv']}" for pid, info in sorted(leftovers.items())))  # fmt: skip
        still = self.processes()
        live_groups = sorted(pgid for pgid in self._groups_seen if group_members(pgid))
        busy_ports = [port for port in (self.public_port, self.proxy_api_port, self.hub_port) if not port_is_free(port)]
        if still or live_groups or busy_ports:
            problems.append(f"still there after stop: processes {sorted(still)}, process groups {live_groups}, busy ports {busy_ports}")
        self._kernels.clear()
        if problems:
            raise AssertionError("\n".join(problems) + f"\n(logs kept in {self.directory})\n" + self.tails())
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- users -------------------------------------------------------------------------
    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid

    @contextlib.contextmanager
    def logging_in(self, user: str) -> Iterator[str]:
        """This harness's password for `user`, set again and held for a login: another harness on
        this machine (a second test run) may have set its own meanwhile."""
        with users_lock():
            set_password(user, self._passwords[user])
            yield self._passwords[user]

    def login(self, user: str) -> requests.Session:
        """Logs `user` in through the Hub's login form (GET for the _xsrf cookie, POST the form), as
        a browser would, through the proxy. The session carries the Hub's login cookie, and the
        X-XSRFToken header that the Hub's API wants with it."""
        session = requests.Session()  # one client: the Hub's _xsrf is bound to IP and User-Agent
        form = session.get(self.url("hub/login"), timeout=30)
        assert form.status_code == 200 and session.cookies.get("_xsrf", path="/hub/"), f"login form: {form.status_code}\n{self.tails()}"
        with self.logging_in(user) as password:
            answer = session.post(self.url("hub/login"), allow_redirects=False, timeout=60, data={
                "username": user, "password": password, "_xsrf": session.cookies.get("_xsrf", path="/hub/")})  # fmt: skip
        assert answer.status_code == 302 and "jupyterhub-hub-login" in session.cookies, (
            f"login as {user}: {answer.status_code} {answer.text[:300]}\n{self.tails()}")  # fmt: skip
        session.headers["X-XSRFToken"] = session.cookies.get("_xsrf", path="/hub/")
        return session

    def _ensure_hub_user(self, user: str) -> None:
        answer = self.admin.post(self.api(f"users/{user}"), timeout=30)
        assert answer.status_code in (201, 409), f"creating Hub user {user}: {answer.status_code} {answer.text}"

    def user_token(self, user: str) -> str:
        """A Hub API token of `user` (all of the user's own permissions: their server's API too),
        made with the harness's service token; one per user for this Hub."""
        if user not in self._user_tokens:
            self._ensure_hub_user(user)
            answer = self.admin.post(self.api(f"users/{user}/tokens"), json={"note": "mlproxy test harness"}, timeout=30)
            assert answer.status_code == 201, f"token for {user}: {answer.status_code} {answer.text}"
            self._user_tokens[user] = answer.json()["token"]
        return self._user_tokens[user]

    def user_session(self, user: str) -> requests.Session:
        """A session with `user`'s API token: for their server's API (/user/NAME/api/...)."""
        session = requests.Session()
        session.headers["Authorization"] = f"token {self.user_token(user)}"
        return session

    # --- servers -----------------------------------------------------------------------
    def _server(self, user: str) -> dict:
        """The Hub's model of the user's default server ({} when it has none)."""
        answer = self.admin.get(self.api(f"users/{user}"), timeout=30)
        if answer.status_code == 404:
            return {}
        answer.raise_for_status()
        return answer.json().get("servers", {}).get("", {})

    def spawn(self, user: str, session: requests.Session | None = None, timeout: float = 300) -> dict:
        """Starts the user's default server (with their login `session` if given, as the user
        would; else with the service token) and returns the Hub's model once it is ready (at once
        if it already is). Checks that a process of the user carries the harness's marker."""
        self._ensure_hub_user(user)
        if (running := self._server(user)).get("ready"):
            return running
        client = session or self.admin
        answer = client.post(self.api(f"users/{user}/server"), timeout=60)
        assert answer.status_code in (201, 202), f"spawning {user}'s server: {answer.status_code} {answer.text}\n{self.tails()}"

        def spawn_failed():
            server = self._server(user)
            if not server:
                return "the Hub dropped the server (the spawn failed)"
            return self._exited(self.hub)

        model = wait_until(lambda: (s := self._server(user)).get("ready") and s, timeout, f"{user}'s server",
                           failed=spawn_failed, details=self.tails)  # fmt: skip
        processes = self._user_processes(user)
        assert processes, (
            f"{user}'s server is ready but no process of uid {self.uid(user)} carries {MARKER}: the configuration "
            f"dropped c.Spawner.environment (a pre_spawn_hook or spawner of its own?); the harness tracks processes by it")  # fmt: skip
        return model

    def _user_processes(self, user: str) -> dict[int, dict]:
        uid = self.uid(user)
        found = {pid: info for pid, info in marked_processes(str(self.directory)).items() if info["uid"] == uid}
        self._groups_seen.update(info["pgid"] for info in found.values())
        return found

    def stop_server(self, user: str, timeout: float = 180) -> None:
        """Stops the user's default server through the Hub; returns once the Hub has no server for
        the user and none of the user's processes from this harness (server, kernels) is left."""
        answer = self.admin.delete(self.api(f"users/{user}/server"), timeout=60)
        assert answer.status_code in (202, 204), f"stopping {user}'s server: {answer.status_code} {answer.text}"
        self._kernels.pop(user, None)
        wait_until(lambda: not self._server(user), timeout, f"the Hub to drop {user}'s server", details=self.tails)
        wait_until(lambda: not self._user_processes(user), timeout, f"{user}'s processes to end",
                   details=lambda: json.dumps(self._user_processes(user), indent=1) + "\n" + self.tails())  # fmt: skip

    # --- kernels -----------------------------------------------------------------------
    def kernel(self, user: str) -> str:
        """The id of the harness's kernel in the user's server (a notebook session), started on first
        use and kept until stop_server()."""
        if user not in self._kernels:
            opened = self.user_session(user).post(self.url(f"user/{user}/api/sessions"), timeout=120, json={
                "path": f"harness-{uuid.uuid4().hex[:8]}.ipynb", "type": "notebook", "name": "", "kernel": {"name": "python3"}})  # fmt: skip
            assert opened.status_code == 201, f"{user}'s session: {opened.status_code} {opened.text[:500]}\n{self.tails()}"
            self._kernels[user] = opened.json()["kernel"]["id"]
        return self._kernels[user]

    def execute(self, user: str, code: str, timeout: float = 120) -> tuple[str, str]:
        """Runs `code` in the user's kernel over the kernel websocket, through the proxy, with the
        user's token; returns (execute_reply's status, stdout, with tracebacks of errors). Waits
        for both the reply and the kernel's idle status, so no output arriving late is lost."""
        kernel_id = self.kernel(user)
        url = self.url(f"user/{user}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}").replace("http://", "ws://", 1)
        connection = websocket.create_connection(url, header=[f"Authorization: token {self.user_token(user)}"], timeout=timeout)
        try:
            msg_id = uuid.uuid4().hex
            connection.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user, "session": uuid.uuid4().hex, "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False},
            }))  # fmt: skip
            stdout, status, idle = [], None, False
            deadline = time.monotonic() + timeout
            while status is None or not idle:
                connection.settimeout(max(deadline - time.monotonic(), 0.1))
                try:
                    message = json.loads(connection.recv())
                except websocket.WebSocketTimeoutException:
                    raise AssertionError(f"no answer from {user}'s kernel within {timeout} s; so far: {''.join(stdout)!r}") from None
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "stream" and content.get("name") == "stdout":
                    stdout.append(content["text"])
                elif kind == "error":
                    stdout.append("\n".join(content["traceback"]))
                elif kind == "execute_reply":
                    status = content["status"]
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
            return status, "".join(stdout)
        finally:
            connection.close()

    # --- observation -------------------------------------------------------------------
    def processes(self) -> dict[int, dict]:
        """Every live process carrying this harness's marker: pid -> uid, pgid, argv."""
        return marked_processes(str(self.directory))

    def tails(self, lines: int = 60) -> str:
        """The last lines of the proxy's and the Hub's logs (users' servers write to the Hub's)."""
        chunks = []
        for log in (self.proxy_log, self.hub_log):
            if log.exists():
                chunks.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)

    # --- configuration -----------------------------------------------------------------
    def _config(self) -> str:
        directory = str(self.directory)
        base = f"""\
# Written by tests/support/hub.py. The harness's base, then the test's lines, then the harness's
# tail (its service and role, its marker in users' servers' environment), appended whatever the
# lines before set.
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.JupyterHub.public_url = {self.base!r}
# External proxy: stopping or restarting the Hub leaves it, its routes and users' servers running.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = {self.proxy_token!r}
c.JupyterHub.cleanup_servers = False
c.JupyterHub.db_url = {f"sqlite:///{directory}/jupyterhub.sqlite"!r}
c.JupyterHub.cookie_secret_file = {f"{directory}/jupyterhub_cookie_secret"!r}
# PAM with real Unix users; 6.x allows nobody unless told.
c.Authenticator.allow_all = True
c.Spawner.cmd = [{str(SINGLEUSER)!r}]
# A loaded two-core machine can take a while to start a server that imports MLflow.
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
"""
        tail = f"""
# --- the harness's tail
c.JupyterHub.services.append({{"name": {SERVICE!r}, "api_token": {self.service_token!r}}})
c.JupyterHub.load_roles.append({{"name": {SERVICE!r}, "scopes": {SERVICE_SCOPES!r}, "services": [{SERVICE!r}]}})
c.Spawner.environment.update({{{MARKER!r}: {directory!r}}})
"""
        return base + "\n# --- the test's lines\n" + self.extra_config.rstrip() + "\n" + tail
