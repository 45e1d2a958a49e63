"""Classification of a run into converged / slow / diverging / overflow."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from src.outcome import CONVERGED, DIVERGING, OVERFLOW, SLOW, STATUSES, cf_attributes, classify


def one(initial: float, final: float, nonfinite: int = -1, scale: float = 1.0, **kw: float) -> str:
    return STATUSES[
        int(
            classify(
                np.array([initial]),
                np.array([final]),
                np.array([nonfinite]),
                np.array([scale]),
                **kw,
            )[0]
        )
    ]


def test_crafted_cases() -> None:
    assert one(10.0, np.nan, nonfinite=66) == "overflow"
    assert one(10.0, 1.0, nonfinite=3) == "overflow"  # non-finite once is overflow for good
    assert one(10.0, np.inf) == "overflow"
    assert one(10.0, 1e-5, scale=1.0) == "converged"
    assert one(10.0, 1e-3, scale=100.0) == "converged"  # tol is relative to mean(y^2)
    assert one(10.0, 1e-3, scale=1.0) == "slow"
    assert one(10.0, 11.0) == "diverging"
    assert one(10.0, 11.0, diverge_factor=2.0) == "slow"
    assert one(1e-9, 2e-9) == "converged"  # tiny and a little worse is still converged
    assert one(10.0, 1e-3, scale=1.0, tol=1e-2) == "converged"
    assert one(0.0, 0.0, scale=0.0) == "converged"  # all-zero targets: scale falls back to 1


finite = st.floats(0, 1e30, allow_nan=False)


@given(finite, finite, st.integers(-1, 500), st.floats(1e-6, 1e6), st.floats(1e-12, 1e-1))
def test_properties(initial: float, final: float, nonfinite: int, scale: float, tol: float) -> None:
    s = STATUSES.index(one(initial, final, nonfinite, scale, tol=tol))
    if nonfinite >= 0:
        assert s == OVERFLOW
    elif final / scale <= tol:
        assert s == CONVERGED
    elif final > initial:
        assert s == DIVERGING
    else:
        assert s == SLOW
    # Monotone in the final loss: a larger final loss never looks better.
    worse = STATUSES.index(one(initial, final * 2 + 1, nonfinite, scale, tol=tol))
    assert worse >= s or (s == DIVERGING and worse == DIVERGING)


def test_cf_attributes_describe_the_codes() -> None:
    attrs = cf_attributes()
    assert list(attrs["flag_values"]) == [0, 1, 2, 3]
    assert attrs["flag_meanings"].split() == list(STATUSES)
