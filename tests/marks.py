"""Which cases run in the quick subset (``pytest -m "not slow"``, the development loop) and
which only in the full suite (the README's test command, CI).

``slow`` marks whole maps with their report, the main job in a subprocess, Keras, the browser
and several devices, and every per-optimizer (or per-kernel) copy of a check beyond a few
representatives (:func:`quick_few`). The full suite runs everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

SLOW = pytest.mark.slow


def quick_few(values: Sequence[object], quick: Sequence[object]) -> list[object]:
    """``values`` to parametrize a test with: those in ``quick`` run in the quick subset,
    every other one is marked slow, so that the full suite checks every value and the quick
    subset a few representatives. A tuple value is one case of several arguments."""
    return [
        v if v in quick else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=SLOW)
        for v in values
    ]
