"""The Kafka broker's jars: resolved once from Maven Central with mvn into a cache folder."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

from paysim.infra.errors import PaysimError
from paysim.infra.files import writing
from paysim.stack.logs import tail_lines
from paysim.stack.prerequisites import find_mvn, raise_if_missing
from paysim.stack.process import run_logged

POM_NAME = "kafka-runtime.pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
COMPLETE_MARKER = ".complete"
MVN_TIMEOUT_S = 900


def pom_text() -> str:
    return resources.files("paysim.stack").joinpath(POM_NAME).read_text()


def _version_in(pom: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.fromstring(pom).find("m:properties/m:kafka.version", ns)
    assert node is not None and node.text, "kafka.version missing from the shipped pom"
    return node.text.strip()


def kafka_version() -> str:
    """The Kafka version pinned in the shipped pom."""
    return _version_in(pom_text())


def completion_marker(pom: str | None = None) -> str:
    """What libs/.complete holds once the jars of ``pom`` (the shipped one by default) are in.

    The version names the folder; the hash makes a cache fetched from an older pom of the same
    version (one without a jar added since) count as not ready, so it is fetched again once."""
    text = pom_text() if pom is None else pom
    return f"{_version_in(text)} sha256:{hashlib.sha256(text.encode()).hexdigest()}\n"


def libs_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{kafka_version()}" / "libs"


def jars_ready(cache_dir: Path) -> bool:
    try:
        return (libs_dir(cache_dir) / COMPLETE_MARKER).read_text() == completion_marker()
    except (OSError, UnicodeDecodeError):
        return False


def ensure_kafka_jars(cache_dir: Path, announce=print) -> Path:
    """Return the folder of broker jars, fetching them with mvn when not cached yet."""
    libs = libs_dir(cache_dir)
    if jars_ready(cache_dir):
        return libs
    with writing("the jar cache", libs.parent):
        libs.parent.mkdir(parents=True, exist_ok=True)
        lock = (libs.parent / ".lock").open("a")
    # Two first starts at once (two stack folders, one cache) fetch once, not over each other.
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_ready(cache_dir):
            return libs
        return _fetch(libs, announce)


def _fetch(libs: Path, announce) -> Path:
    mvn, missing = find_mvn()
    raise_if_missing([missing] if missing else [])
    announce(f"Fetching the Kafka {kafka_version()} broker jars from Maven Central into "
             f"{libs.parent} (once)")
    # Copy into a scratch folder and rename at the end, so an interrupted fetch leaves no
    # half-filled libs folder behind.
    with tempfile.TemporaryDirectory(dir=libs.parent, prefix=".fetch-") as scratch:
        work = Path(scratch)
        (work / "pom.xml").write_text(pom_text())
        log = libs.parent / "mvn.log"
        command = [mvn, "-B", "-f", str(work / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                   "-DincludeScope=runtime", f"-DoutputDirectory={work / 'libs'}"]
        run_logged(command, log, "mvn fetching the Kafka jars", timeout=MVN_TIMEOUT_S)
        if not any((work / "libs").glob("kafka_2.13-*.jar")):
            raise PaysimError("mvn finished but fetched no kafka_2.13 jar", details=tail_lines(log))
        (work / "libs" / COMPLETE_MARKER).write_text(completion_marker())
        if libs.exists():
            # Refetched after a pom change: a broker may be running from the old folder. Moved
            # aside rather than deleted first, the path is missing for an instant, not for the
            # whole delete; the scratch folder's cleanup deletes it.
            libs.rename(work / "replaced-libs")
        (work / "libs").rename(libs)
    return libs
