"""The jar cache: when it counts as complete, and fetching it again after a pom change."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysim.infra.errors import PaysimError
from paysim.stack import jars
from paysim.stack.jars import (
    COMPLETE_MARKER,
    completion_marker,
    ensure_kafka_jars,
    jars_ready,
    kafka_version,
    libs_dir,
    pom_text,
)

# Stands in for mvn: counts its runs and "fetches" the jar names in FAKE_JARS into
# -DoutputDirectory.
FAKE_MVN = """#!/bin/sh
echo run >> "$(dirname "$0")/runs"
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
mkdir -p "$out"
for jar in $FAKE_JARS; do : > "$out/$jar"; done
"""


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake mvn; returns the file that gets one line per run."""
    mvn = tmp_path / "bin" / "mvn"
    mvn.parent.mkdir()
    mvn.write_text(FAKE_MVN)
    mvn.chmod(0o755)
    monkeypatch.setattr(jars, "find_mvn", lambda: (str(mvn), None))
    monkeypatch.setenv("FAKE_JARS", f"kafka_2.13-{kafka_version()}.jar kafka-tools.jar")
    return mvn.parent / "runs"


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def write_cache(cache: Path, marker: str | None, jar: str = "old.jar") -> Path:
    libs = libs_dir(cache)
    libs.mkdir(parents=True)
    (libs / jar).touch()
    if marker is not None:
        (libs / COMPLETE_MARKER).write_text(marker)
    return libs


def test_a_marker_of_the_shipped_pom_is_ready(tmp_path: Path) -> None:
    write_cache(tmp_path, completion_marker())
    assert jars_ready(tmp_path)


def test_no_cache_or_no_marker_is_not_ready(tmp_path: Path) -> None:
    assert not jars_ready(tmp_path / "empty")
    write_cache(tmp_path, None)
    assert not jars_ready(tmp_path)


def test_a_version_only_marker_from_before_the_hash_is_not_ready(tmp_path: Path) -> None:
    write_cache(tmp_path, kafka_version() + "\n")
    assert not jars_ready(tmp_path)


def test_a_marker_from_another_pom_is_not_ready(tmp_path: Path) -> None:
    other_pom = pom_text().replace("</dependencies>", "<!-- one more --></dependencies>")
    other = completion_marker(other_pom)
    assert other.split()[0] == kafka_version(), "same version, so the same folder"
    write_cache(tmp_path, other)
    assert not jars_ready(tmp_path)


def test_a_stale_cache_is_fetched_again_once(tmp_path: Path, fake_mvn: Path) -> None:
    cache = tmp_path / "cache"
    libs = write_cache(cache, kafka_version() + "\n")
    messages: list[str] = []
    assert ensure_kafka_jars(cache, announce=messages.append) == libs
    assert runs(fake_mvn) == 1
    assert "(once)" in messages[0]
    assert sorted(p.name for p in libs.iterdir()) == sorted(
        [COMPLETE_MARKER, f"kafka_2.13-{kafka_version()}.jar", "kafka-tools.jar"])
    assert (libs / COMPLETE_MARKER).read_text() == completion_marker()
    assert jars_ready(cache)
    # Neither the replaced folder nor the scratch folder is left behind.
    assert sorted(p.name for p in libs.parent.iterdir()) == [".lock", "libs", "mvn.log"]

    assert ensure_kafka_jars(cache, announce=messages.append) == libs
    assert runs(fake_mvn) == 1
    assert len(messages) == 1


def test_mvn_fetching_no_broker_jar_leaves_the_old_cache_alone(
        tmp_path: Path, fake_mvn: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_JARS", "something-else.jar")
    libs = write_cache(tmp_path, kafka_version() + "\n")
    with pytest.raises(PaysimError, match=r"fetched no kafka_2\.13 jar"):
        ensure_kafka_jars(tmp_path, announce=lambda _: None)
    assert runs(fake_mvn) == 1
    assert sorted(p.name for p in libs.iterdir()) == [COMPLETE_MARKER, "old.jar"]
    assert not jars_ready(tmp_path)
