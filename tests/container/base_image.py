"""The local stand-in for python:3.11-slim-bookworm: a debootstrap bookworm rootfs with python3.

No container registry is reachable where this tier runs, so the Dockerfile's `BASE` is built
here: `debootstrap --variant=minbase --include=python3 bookworm` (Debian's python3 is 3.11 at
/usr/bin/python3), plus the host's local CA certificates so pip inside the build can verify TLS
through this network's proxy. The rootfs tarball is cached outside the repository and imported
into podman only when the image is missing; any change to its recipe (suite, packages, mirror,
certificates) changes the key, hence the tag, hence a rebuild.

    python -m tests.container.base_image      # build or reuse it, print the tag

MLPROXY_TEST_BASE_IMAGE=python:3.11-slim-bookworm uses a real image instead (where a registry
is reachable).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.container.engine import EngineError, podman

CACHE_DIR = Path(os.environ.get("MLPROXY_TEST_CACHE", "/var/cache/mlproxy-test")) / "container-base"
SUITE = "bookworm"
PACKAGES = ("python3",)
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
RECIPE_VERSION = 1  # bump when the steps below change in a way the key does not see
IMAGE_NAME = "localhost/mlproxy-test-base"


def debian_mirror() -> str:
    """The mirror this machine's apt uses (so the rootfs comes from where apt-get works)."""
    if mirror := os.environ.get("MLPROXY_TEST_DEBIAN_MIRROR"):
        return mirror
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = path.read_text()
        except OSError:
            continue
        if found := re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE) or re.search(r"^deb\s+(\S+/debian)\s", text, re.MULTILINE):
            return found.group(1)
    return "http://deb.debian.org/debian"


def local_certificates() -> list[Path]:
    return sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []


def recipe_key() -> str:
    digest = hashlib.sha256()
    for part in (str(RECIPE_VERSION), SUITE, "minbase", *PACKAGES, debian_mirror()):
        digest.update(part.encode() + b"\0")
    for certificate in local_certificates():
        digest.update(certificate.name.encode() + b"\0" + certificate.read_bytes())
    return digest.hexdigest()[:12]


def image_tag() -> str:
    return f"{IMAGE_NAME}:{SUITE}-{recipe_key()}"


def say(message: str) -> None:
    print(f"base image: {message}", file=sys.stderr, flush=True)


def build_rootfs_tarball(tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap is not installed (apt-get install debootstrap)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), debian_mirror()],
            check=False, capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            raise EngineError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        certificates = rootfs / LOCAL_CA_DIR.relative_to("/")
        certificates.mkdir(parents=True, exist_ok=True)
        for certificate in local_certificates():
            shutil.copy2(certificate, certificates / certificate.name)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    say(f"debootstrap {SUITE} + {', '.join(PACKAGES)}: {time.monotonic() - started:.0f} s -> {tarball}")


def ensure_base_image() -> str:
    """The base image's tag, building the rootfs and importing it only when missing."""
    if override := os.environ.get("MLPROXY_TEST_BASE_IMAGE"):
        return override
    tag = image_tag()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same rootfs
        if podman("image", "exists", tag, check=False).returncode == 0:
            return tag
        tarball = CACHE_DIR / f"{SUITE}-{recipe_key()}.tar"
        if not tarball.exists():
            for stale in CACHE_DIR.glob(f"{SUITE}-*.tar"):
                stale.unlink()  # an older recipe's rootfs: never used again
            build_rootfs_tarball(tarball)
        started = time.monotonic()
        podman("import", "--quiet", "--change", 'CMD ["/bin/bash"]', str(tarball), tag, timeout=600)
        say(f"imported {tag} in {time.monotonic() - started:.0f} s")
    return tag


if __name__ == "__main__":
    print(ensure_base_image())
