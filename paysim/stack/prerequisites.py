"""Find the programs the local stack runs, and say what to install when one is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

from paysim.infra.errors import MissingPrerequisite

MIN_JAVA = 17


@dataclass(frozen=True)
class Missing:
    what: str
    install: str

    def __str__(self) -> str:
        return f"{self.what} ({self.install})"


def raise_if_missing(missing: list[Missing]) -> None:
    if missing:
        listed = "; ".join(str(item) for item in missing)
        raise MissingPrerequisite(f"the local stack needs {listed}")


def java_executable() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = os.path.join(java_home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("java")


@cache
def java_major_version(java: str) -> int | None:
    """The major version `java -version` reports (8 for 1.8), or None when it cannot say."""
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> tuple[str | None, Missing | None]:
    hint = Missing(f"Java {MIN_JAVA}+", "apt-get install openjdk-17-jre-headless")
    java = java_executable()
    if java is None:
        return None, hint
    major = java_major_version(java)
    if major is None or major < MIN_JAVA:
        found = f"found Java {major}" if major else "found a java that reports no version"
        return None, Missing(f"Java {MIN_JAVA}+, {found} at {java}", hint.install)
    return java, None


def find_mvn() -> tuple[str | None, Missing | None]:
    mvn = shutil.which("mvn")
    hint = Missing("Maven to fetch the Kafka jars once", "apt-get install maven")
    return (mvn, None) if mvn else (None, hint)


def find_redis_server() -> tuple[str | None, Missing | None]:
    server = shutil.which("redis-server")
    hint = Missing("redis-server", "apt-get install redis-server")
    return (server, None) if server else (None, hint)


def find_redis_cli() -> tuple[str | None, Missing | None]:
    cli = shutil.which("redis-cli")
    hint = Missing("redis-cli to create the local Redis Cluster", "apt-get install redis-tools")
    return (cli, None) if cli else (None, hint)
