"""Writing files that others read while we write them: atomically, private from the first byte;
and the name of the user whose files they are."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def write_atomically(path: Path, content: str, mode: int = 0o600, group: int | None = None, owner: int | None = None) -> None:
    """Readers see the old content or the new, never a partial write; the file has `mode` (and
    `group`, a gid, and `owner`, a uid) before it appears under its name (no window where a secret is
    readable by others). Safe in a directory another user owns (root writing into the stack's
    state directory): the temporary file is created new, never through a link someone planted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # our own leftover, or a link planted in its place
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(descriptor, mode)  # the umask may have narrowed it (0644 unit files)
            if group is not None or owner is not None:
                os.fchown(descriptor, -1 if owner is None else owner, -1 if group is None else group)
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
