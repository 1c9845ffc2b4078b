"""What the fuzz tests share: the bound on examples and arbitrary JSON over given texts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded, so the pure suite stays well under a minute; no deadline: a slow example on a
# busy machine is no failure.
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def json_values(texts: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Any JSON value (null, booleans, numbers, ``texts``; lists and objects of them)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
        max_leaves=12)
