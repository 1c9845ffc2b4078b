"""What paysim keeps on disk is its owner's alone, and a state file it cannot write is one line.

The stack and the services here are the session's (tests/conftest.py): started by paysim's own
code, so every file under their folders was created by paysim or by a process it started.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from paysim.infra.config import Settings, settings_env
from tests.helpers import assert_one_line_error, run_paysim
from tests.integration.pipeline_helpers import send


def open_to_others(folder: Path) -> list[str]:
    """Files and folders under ``folder`` its group or others may read, write or enter."""
    found = []
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{stat.filemode(mode)} {path}")
    return found


def test_state_files_are_readable_by_their_owner_only(pipeline: Settings) -> None:
    send(pipeline, "--count", "20", "--seed", "3")  # partitions, the AOF, secrets, logs
    folders = [pipeline.stack.dir, pipeline.services.dir, pipeline.secrets.file.parent]
    # What matters most is there: the broker's partition data, Redis's append-only file, the
    # services' logs and the keys.
    assert list(pipeline.stack.dir.rglob("payments.requested-*/*.log"))
    assert list(pipeline.stack.dir.rglob("*.aof"))
    assert list((pipeline.services.dir / "logs").glob("*.log"))
    assert pipeline.secrets.file.exists()
    assert [entry for folder in folders for entry in open_to_others(folder)] == []


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A file where a folder should be: unwritable for root too, where chmod is not."""
    path = tmp_path / "blocker"
    path.write_text("a file where a folder should be\n")
    return path


def test_send_names_a_secrets_file_it_cannot_write(pipeline: Settings, blocker: Path) -> None:
    path = blocker / "secrets.json"
    result = run_paysim("send", "--count", "1",
                        env={**settings_env(pipeline), "PAYSIM_SECRETS_FILE": str(path)})
    assert_one_line_error(result, 1, f"cannot write the secrets file {path}")


def test_send_names_a_record_file_it_cannot_write(pipeline: Settings, blocker: Path) -> None:
    path = blocker / "sent.jsonl"
    result = run_paysim("send", "--count", "1", "--record", str(path),
                        env=settings_env(pipeline))
    assert_one_line_error(result, 1, f"cannot write the record file {path}")
