"""A throwaway S3 store for the tests: Ceph's radosgw on a single-node cluster, from Debian's packages.

One monitor, one OSD on memstore (objects in the OSD's memory) and the gateway, run by hand in the
foreground (no systemd), on loopback ports from `port` up, in a temporary directory. Bootstrap to a
first bucket takes 2-3 s here with the monitor's Paxos timings shortened (below); `scripts/setup`
installs the packages (about a minute, once). `stop()` stops only the gateway, as an object store's
outage: the monitor and the OSD keep the objects, and `start()` brings the gateway back to them.
`close()` ends the cluster.

radosgw rather than moto's server, which the first version of these tests used: it is the real S3
implementation Debian ships (the one a team may run), and its outage keeps the objects.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import requests

# The gateway user's keys; MLflow and boto3 find them in the environment.
ACCESS_KEY, SECRET_KEY = "mlproxy-test-key", "mlproxy-test-secret-do-not-use"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph-authtool", "monmaptool", "ceph")

CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
ms bind port min = {ms_min}
ms bind port max = {ms_max}
keyring = {dir}/keyring
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
# One OSD: pools of one replica, few placement groups, no placement across hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 5
# Each pool radosgw creates waits on a Paxos round: 2 s by default, 15 s for its first start.
paxos propose interval = 0.05
paxos min wait = 0.01
mon tick interval = 1
[mon]
mon data = {dir}/mon.$id
[osd]
osd data = {dir}/osd.$id
osd objectstore = memstore
memstore device bytes = 4294967296
osd max object size = 134217728
[client.rgw.gw]
rgw data = {dir}/rgw.gw
rgw frontends = beast endpoint=127.0.0.1:{port}
"""


class S3Server:
    """radosgw on `port`; the cluster's monitor and messengers on port+1 .. port+60."""

    PORTS = 61  # port .. port+60, for free_port(span=S3Server.PORTS)

    @staticmethod
    def installed() -> bool:
        return all(shutil.which(name) for name in BINARIES)

    def __init__(self, port: int, bucket: str = "mlproxy-artifacts"):
        missing = [name for name in BINARIES if shutil.which(name) is None]
        if missing:
            raise RuntimeError(f"Ceph is not installed ({', '.join(missing)} missing): run scripts/setup as root")
        self.port, self.bucket = port, bucket
        self.dir = Path(tempfile.mkdtemp(prefix="mlproxy-ceph-"))
        self.conf = self.dir / "ceph.conf"
        self.cluster: list[subprocess.Popen] = []  # monitor, OSD
        self.gateway: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
        )

    def start(self, timeout: float = 120) -> S3Server:
        """The first time: the cluster, the user and the bucket; after stop(): the gateway again."""
        first = not self.cluster
        if first:
            self._bootstrap()
        self.gateway = self._daemon("radosgw", "-n", "client.rgw.gw")
        deadline = time.monotonic() + timeout
        self._until(deadline, self._answering, "radosgw answering")
        if first:
            self._until(deadline, self._user_created, "the radosgw user created")
            self._until(deadline, self._bucket_created, f"bucket {self.bucket} created")
        return self

    def stop(self) -> None:
        """The object store goes away (the gateway); the cluster keeps what it holds."""
        if self.gateway is not None:
            _end(self.gateway)
            self.gateway = None

    def close(self) -> None:
        self.stop()
        for process in reversed(self.cluster):
            _end(process)
        self.cluster = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every object under prefix and its size."""
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found.update({entry["Key"]: entry["Size"] for entry in page.get("Contents", [])})
        return found

    @property
    def environment(self) -> dict[str, str]:
        """What a stack needs in its environment to reach this server (keys are secrets there)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    # --- the cluster ------------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        for sub in ("run", "log", "mon.a", "osd.0", "rgw.gw"):
            (self.dir / sub).mkdir()
        fsid = str(uuid.uuid4())
        self.conf.write_text(CONF.format(fsid=fsid, dir=self.dir, port=self.port, mon_port=self.port + 1, ms_min=self.port + 10, ms_max=self.port + 60))
        keyring = str(self.dir / "keyring")
        # Every key in one keyring, given to the monitor's mkfs: no `ceph auth add` afterwards.
        self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._run("ceph-authtool", keyring, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *")
        self._run("ceph-authtool", keyring, "--gen-key", "-n", "osd.0", "--cap", "mon", "allow profile osd", "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd")
        self._run("ceph-authtool", keyring, "--gen-key", "-n", "client.rgw.gw", "--cap", "mon", "allow rw", "--cap", "osd", "allow rwx", "--cap", "mgr", "allow rw")
        monmap = str(self.dir / "monmap")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.port + 1}]", monmap)
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        self.cluster.append(self._daemon("ceph-mon", "-i", "a"))
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "-c", str(self.conf), "--connect-timeout", "60", "osd", "new", osd_uuid, "0")
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self.cluster.append(self._daemon("ceph-osd", "-i", "0"))

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} ... exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")

    def _daemon(self, binary: str, *args: str) -> subprocess.Popen:
        with open(self.dir / "log" / f"{binary}.out", "a") as log:
            return subprocess.Popen([binary, "-f", "-c", str(self.conf), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _until(self, deadline: float, done, what: str) -> None:
        while time.monotonic() < deadline:
            for process in [*self.cluster, self.gateway]:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited {process.returncode} while waiting for {what}: {self._logs()}")
            if done():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}: {self._logs()}")

    def _answering(self) -> bool:
        try:
            requests.get(self.endpoint, timeout=5)
            return True
        except requests.ConnectionError:
            return False

    def _user_created(self) -> bool:
        argv = ["radosgw-admin", "-c", str(self.conf), "user", "create", "--uid=mlproxy-test", "--display-name=mlproxy tests",
                f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}"]  # fmt: skip
        return subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0

    def _bucket_created(self) -> bool:
        try:
            self.client().create_bucket(Bucket=self.bucket)
            return True
        except botocore.exceptions.ClientError as error:
            return error.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou"
        except botocore.exceptions.EndpointConnectionError:
            return False

    def _logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}" for path in sorted((self.dir / "log").glob("*")))


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
