"""A throwaway PostgreSQL server (Debian's binaries) on a port and directory of the test's own."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class Postgres:
    """initdb + pg_ctl, trust auth on 127.0.0.1, or with `password` scram-sha-256 for TCP clients
    (user mlproxy). As root it runs as the `postgres` user, in a directory of its own under /tmp
    (pytest's temporary tree is private to root)."""

    def __init__(self, port: int, password: str | None = None):
        self.directory, self.port, self.password = Path(tempfile.mkdtemp(prefix="mlproxy-pg-")), port, password
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        env = {**os.environ, "PGPASSWORD": self.password} if self.password else None
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, cwd="/", env=env)

    def init(self) -> Postgres:
        if self.user:
            entry = pwd.getpwnam(self.user)
            shutil.chown(self.directory, entry.pw_uid, entry.pw_gid)
        auth = ["-A", "trust"]
        if self.password:
            password_file = self.directory / "password"
            password_file.write_text(self.password + "\n")
            if self.user:
                shutil.chown(password_file, self.user)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]
        self._run(str(self.bin / "initdb"), "-D", str(self.directory / "data"), *auth, "-U", "mlproxy")
        return self

    @property
    def uri(self) -> str:
        return f"postgresql://mlproxy@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-l", str(self.directory / "postgres.log"),
            "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1", "-w", "start",
        )

    def create_database(self, name: str) -> None:
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlproxy", name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlproxy", "-d", database,
                         "--no-psqlrc", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement).stdout  # fmt: skip

    def stop_server(self) -> None:
        """Stop it if it runs (fast: open sessions are ended), keeping its data for a start()."""
        pid_file = self.directory / "data" / "postmaster.pid"
        if pid_file.exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        """Stop it if it runs, and remove its directory."""
        self.stop_server()
        shutil.rmtree(self.directory, ignore_errors=True)
