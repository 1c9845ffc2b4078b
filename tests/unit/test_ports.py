"""Free ports for private stacks: picks made before anything binds never collide."""

from __future__ import annotations

import pytest

from paysim.stack import ports


@pytest.fixture
def all_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing handed out yet, and every port bindable."""
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setattr(ports, "bindable", lambda port: True)


@pytest.fixture
def picks(all_free: None, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bases random.randint will offer, in order."""
    offered: list[int] = []
    monkeypatch.setattr(ports.random, "randint", lambda low, high: offered.pop(0))
    return offered


def test_a_run_overlapping_one_handed_out_is_refused(picks: list[int]) -> None:
    # A Redis Cluster's 12 ports at 25000-25011, then three controllers two apart: the
    # offers at 25006 and 24996 (ending on 25000) overlap the first run, 25012 does not.
    picks.extend([25000, 25006, 24996, 25012])
    assert ports.free_port_run(12) == 25000
    assert ports.free_port_run(3, step=2) == 25012
    assert picks == []


def test_a_single_port_is_never_handed_out_twice(picks: list[int]) -> None:
    picks.extend([26000, 26000, 26000, 26001])
    assert [ports.free_port(), ports.free_port()] == [26000, 26001]


def test_no_free_run_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "bindable", lambda port: False)
    with pytest.raises(RuntimeError, match="no run of 3 free ports"):
        ports.free_port_run(3)


def test_a_run_stays_below_the_ephemeral_range(all_free: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    highs: list[int] = []
    monkeypatch.setattr(ports.random, "randint", lambda low, high: highs.append(high) or high)
    base = ports.free_port_run(3, step=2)
    assert base + 4 == ports.PORT_RANGE[1] and highs == [base]
