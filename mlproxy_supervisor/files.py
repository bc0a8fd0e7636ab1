"""Writing files that others read while we write them: atomically, private from the first byte;
and the name of the user whose files they are."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def write_atomically(path: Path, content: str, mode: int = 0o600, group: int | None = None) -> None:
    """Readers see the old content or the new, never a partial write; the file has `mode` (and
    `group`, a gid) before it appears under its name (no window where a secret is readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        os.chmod(temporary, mode)  # the umask may have narrowed it (0644 unit files)
        if group is not None:
            os.chown(temporary, -1, group)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def current_user() -> str:
    """The name of the user this process acts as (its effective uid)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry, e.g. `docker run --user 12345`
        return str(os.geteuid())
