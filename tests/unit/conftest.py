"""Fixtures the pure tests share."""

from __future__ import annotations

import pytest

from tests.unit.cli_runner import PaysimCli


@pytest.fixture
def paysim_cli(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> PaysimCli:
    """`paysim ...` run in this process: see tests/unit/cli_runner.py."""
    return PaysimCli(monkeypatch, capfd)
