"""paysim's state on disk: created for its owner alone, and a failure to write it is one line.

The state folders (the local stack's, the services', the secrets file's) hold keys, payment
logs, and the broker's and Redis's data: no one but their owner has any business reading them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from paysim.infra.errors import PaysimError

# Folders 0700, files 0600: for what paysim writes itself (owner_only) and for every process it
# starts (subprocess.Popen(umask=PRIVATE_UMASK)), which create files of their own.
PRIVATE_UMASK = 0o077


@contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders created inside are readable by their owner only.

    The umask is the process's: it covers every writer inside (mkdir's parents, open, a log a
    child inherits) where a mode per call would miss one."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


@contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """A file-system failure inside becomes one line naming ``what`` and ``path`` (exit 1)."""
    try:
        yield
    except OSError as exc:
        # mkdir(parents=True) says "File exists" when a part of the path is a file.
        reason = "Not a directory" if isinstance(exc, FileExistsError) else (exc.strerror
                                                                             or str(exc))
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise PaysimError(f"cannot write {what} {path}: {reason}{where}") from None
