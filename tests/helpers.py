"""Helpers the tests share: free ports, settings for a private stack, running the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from paysim.config import OPTIONS_BY_KEY, Settings, load_settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_stack_flags(stack_dir: Path) -> dict[str, object]:
    """Flags for a stack of its own: a temporary folder and free ports."""
    return {
        "stack.dir": str(stack_dir),
        "stack.kafka_port": free_port(),
        "stack.controller_port": free_port(),
        "stack.redis_port": free_port(),
    }


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
