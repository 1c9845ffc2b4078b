"""Background processes paysim starts and later finds again through a pid record on disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paysim.infra.errors import PaysimError
from paysim.infra.files import PRIVATE_UMASK
from paysim.infra.waiting import wait_until
from paysim.stack.logs import tail_lines


@dataclass(frozen=True)
class ProcessRecord:
    """What paysim wrote when it started a component, kept as JSON beside its data."""

    pid: int
    address: str
    version: str
    started_at: float
    # The kernel's start time of the process (clock ticks since boot): with the pid it names
    # one process for good, so a reused pid is never mistaken for ours.
    boot_ticks: int
    details: dict[str, Any] = field(default_factory=dict)  # anything else its owner keeps

    def save(self, path: Path) -> None:
        # Written aside and renamed: a reader never sees half a record.
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(asdict(self)) + "\n")
        os.replace(scratch, path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _reap(pid: int) -> None:
    # A process we started and that died stays a zombie until its parent waits for it;
    # waiting here makes liveness checks true in the process that started it too.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is the first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def is_alive(pid: int) -> bool:
    _reap(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def boot_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # starttime is field 22 of stat; fields[] starts at field 3 (state).
    return int(fields[19]) if fields else None


def is_running(record: ProcessRecord | None) -> bool:
    """True when the recorded process is alive and is still the one paysim started."""
    return (
        record is not None and is_alive(record.pid)
        and boot_ticks(record.pid) == record.boot_ticks
    )


def start_detached(argv: list[str], output: Path, cwd: Path) -> int:
    """Start ``argv`` in a session of its own, output appended to ``output``; return its pid."""
    with output.open("ab") as out, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            start_new_session=True, close_fds=True, umask=PRIVATE_UMASK,
        )
    return process.pid


def stop(pid: int, grace_s: float) -> bool:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; True if it had to be killed."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return sig == signal.SIGKILL
        except PermissionError:
            raise PaysimError(
                f"not allowed to signal pid {pid}: it belongs to another user") from None
        if wait_until(lambda: not is_alive(pid), timeout=wait_s, interval=0.05):
            return sig == signal.SIGKILL
    return True



def run_logged(argv: list[str], log: Path, what: str, timeout: float = 900) -> None:
    """Run a one-off command to completion, output in ``log``; raise with its tail on failure."""
    try:
        with log.open("w") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                    check=False, stdin=subprocess.DEVNULL,
                                    umask=PRIVATE_UMASK)
    except subprocess.TimeoutExpired:
        raise PaysimError(f"{what} did not finish in {timeout:.0f} s",
                          details=tail_lines(log)) from None
    if result.returncode != 0:
        raise PaysimError(f"{what} failed (exit {result.returncode}); see {log}",
                          details=tail_lines(log))
