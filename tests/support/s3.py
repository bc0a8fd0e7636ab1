"""A throwaway S3-compatible server for the tests: moto's standalone server (`moto[server]`).

Not Ceph: Debian 12's radosgw needs a monitor, a memstore OSD and the gateway (112 packages,
three daemons) and was not tried within this issue's time; moto speaks the S3 wire protocol over
HTTP, as MLflow's own tests use it. It keeps objects in memory, so a restart loses them: tests
that restart it create the bucket again (an object store that comes back empty, not a real
store's outage). docs/SCALING.md says the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import requests

# Test keys: moto accepts any, but MLflow and boto3 must find some (from the environment).
ACCESS_KEY, SECRET_KEY = "mlproxy-test-key", "mlproxy-test-secret-do-not-use"


class S3Server:
    def __init__(self, port: int, bucket: str = "mlproxy-artifacts"):
        self.port, self.bucket = port, bucket
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="mlproxy-s3-", suffix=".log")[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
        )

    def start(self, timeout: float = 60) -> S3Server:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                requests.get(self.endpoint, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"moto server not answering on {self.endpoint} after {timeout} s")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self.process = None

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
