"""The machine a benchmark ran on, for the results file and docs/performance.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from paysim.infra.compiled import build_state
from paysim.stack.jars import kafka_version


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_facts(java: str | None, redis_server: str | None) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "compiled": build_state().describe(),
        "java": _first_line([java, "-version"]) if java else "unknown",
        "kafka": kafka_version(),
        "redis": _first_line([redis_server, "--version"]) if redis_server else "unknown",
    }
