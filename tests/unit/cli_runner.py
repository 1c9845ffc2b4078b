"""Run `paysim` in the test's own process, the way tests.helpers.run_paysim runs it in a child.

A child costs an interpreter start and paysim's imports (a second or more on a loaded machine)
for a check that fails in milliseconds; in-process, the command runs through the same entry
point (paysim.cli.main), and the result is the same CompletedProcess: the exit code, and what
reached file descriptors 1 and 2 (capfd: Python's print, click, rich and any C library alike).

What a child would not share is put back after each call: the environment (the caller's PAYSIM_*
variables dropped, ``env`` set, as run_paysim does), and the SIGINT/SIGTERM handlers (run-all
installs its own). The rich consoles in paysim.cli.render look up sys.stdout/sys.stderr when
they print, so capfd sees them; they read COLUMNS then too, so ``env={"COLUMNS": ...}`` works.

A command that starts processes still starts them (`run-all --detach` its supervisor, `stack
up` java): only the command itself runs here. What must be a process of its own stays with
run_paysim: `service` (it takes over the process's logging and signals for its life), and
anything a test sends a real signal to.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from paysim.cli import main

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PaysimCli:
    """``paysim_cli(*args, env=...)``: a CompletedProcess, as run_paysim returns."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 capfd: pytest.CaptureFixture[str]) -> None:
        self._monkeypatch = monkeypatch
        self._capfd = capfd

    def __call__(self, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        with self._monkeypatch.context() as patch:
            for name in [name for name in os.environ if name.startswith("PAYSIM_")]:
                patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            self._capfd.readouterr()  # only this command's output
            try:
                main(list(args))
                code = 0  # main always exits; kept in case it returns
            except SystemExit as ended:
                code = ended.code if isinstance(ended.code, int) else int(ended.code is not None)
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
            out, err = self._capfd.readouterr()
        return subprocess.CompletedProcess(["paysim", *args], code, out, err)
