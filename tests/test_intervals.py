"""Conformal bands: per-group windows that hold the requested share of residuals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chargecast.intervals import ConformalBands, group_names, shortest_window
from chargecast.schema import FEATURES


def rows(n: int, smoker: float, bmi: float) -> np.ndarray:
    X = np.zeros((n, len(FEATURES)))
    X[:, FEATURES.index("smoker")] = smoker
    X[:, FEATURES.index("bmi")] = bmi
    return X


def test_window_holds_the_conformal_count() -> None:
    r = np.random.default_rng(0).normal(size=999)
    lo, hi = shortest_window(r, 0.9)
    assert np.sum((r >= lo) & (r <= hi)) >= math.ceil(1000 * 0.9)


def test_window_prefers_the_dense_side_of_skewed_residuals() -> None:
    rng = np.random.default_rng(1)
    r = np.concatenate([rng.normal(-2, 1, 920), rng.uniform(20, 40, 80)])  # mean-centred, 8% far above
    lo, hi = shortest_window(r, 0.9)
    assert hi < 1  # the window stays below the tail
    assert (hi - lo) < 0.75 * 2 * np.quantile(np.abs(r), 0.9)  # narrower than a symmetric band


def test_too_few_residuals_give_an_unbounded_window() -> None:
    assert shortest_window(np.arange(5.0), 0.9) == (-math.inf, math.inf)


def test_groups_are_calibrated_separately_and_floored_at_zero() -> None:
    rng = np.random.default_rng(2)
    X = np.vstack([rows(500, 0, 25), rows(200, 1, 25), rows(200, 1, 35)])
    res = np.concatenate([rng.normal(0, 100, 500), rng.normal(0, 1000, 200), rng.normal(0, 5000, 200)])
    bands = ConformalBands.fit(res, X, 0.9)
    widths = np.subtract(bands.hi, bands.lo)
    assert widths[0] < widths[1] < widths[2]
    low, high = bands.apply(np.full(len(X), 100.0), X)
    assert np.all(low >= 0)
    assert np.all(high >= low)
    for i in (0, 600, 800):
        assert bands.apply_row(100.0, list(X[i])) == pytest.approx((low[i], high[i]))


def test_excluded_inputs_are_not_used_for_grouping() -> None:
    assert group_names(("smoker",)) == ["bmi < 30", "bmi >= 30"]
    assert group_names(("smoker", "bmi")) == ["all"]
    X = np.vstack([rows(100, 0, 25), rows(100, 1, 25)])
    bands = ConformalBands.fit(np.random.default_rng(3).normal(size=200), X, 0.9, ("smoker",))
    low, high = bands.apply(np.zeros(200), X)
    assert np.ptp(high - low) == 0
