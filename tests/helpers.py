"""Helpers the tests share: free ports, settings for a private stack, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paysim.infra.config import OPTIONS_BY_KEY, Settings, load_settings
from paysim.stack import ports

free_port = ports.free_port
free_port_run = ports.free_port_run


def private_stack_flags(stack_dir: Path) -> dict[str, object]:
    """Flags for a stack of its own: a temporary folder and free ports."""
    return ports.private_stack_flags(str(stack_dir))


def settings_for(flags: dict[str, object]) -> Settings:
    # An empty environment: a developer's PAYSIM_* variables must not leak into tests.
    return load_settings(flags, env={})


def cli_args(flags: dict[str, object]) -> list[str]:
    """The same flags as `paysim` command-line arguments."""
    return [arg for key, value in flags.items()
            for arg in (OPTIONS_BY_KEY[key].flag_name, str(value))]


def run_paysim(*args: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a user would."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSIM_")}
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "paysim", *args], capture_output=True,
                          text=True, env=child_env, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int,
                          *fragments: str) -> None:
    """The CLI failed as it should: exit ``code``, one `paysim: error:` line holding every
    fragment, no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paysim: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
