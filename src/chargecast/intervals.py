"""Prediction intervals calibrated by group-wise (Mondrian) conformal prediction.

Residuals here are far from symmetric: most patients sit in a tight band below the mean,
and a minority carry large unexplained extra charges. A symmetric band around the mean
wastes width on both sides, so each group gets the narrowest of a few conformal windows
that hold ceil((n + 1) * level) of its calibration residuals. Groups are the
data's distinct risk regimes (non-smokers, smokers, obese smokers); coverage is then
calibrated per group, not just on average (approximately: the window is picked on the
same residuals; CV measures the real coverage fold by fold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from chargecast.features import OBESE_BMI
from chargecast.schema import FEATURES

Array = npt.NDArray[np.float64]
SMOKER_COL, BMI_COL = FEATURES.index("smoker"), FEATURES.index("bmi")
MIN_GROUP = 30  # below this many calibration residuals a group borrows the pooled window


def group_names(excluded: Sequence[str] = ()) -> list[str]:
    """Group labels, using only the inputs the model may use."""
    if "smoker" in excluded:
        return ["all"] if "bmi" in excluded else ["bmi < 30", "bmi >= 30"]
    if "bmi" in excluded:
        return ["non-smoker", "smoker"]
    return ["non-smoker", "smoker, bmi < 30", "smoker, bmi >= 30"]


def assign_groups(X: Array, names: Sequence[str]) -> npt.NDArray[np.intp]:
    """Index into ``names`` for every encoded row."""
    smoker = X[:, SMOKER_COL] == 1.0
    obese = X[:, BMI_COL] >= OBESE_BMI
    if len(names) == 3:
        groups: npt.NDArray[np.intp] = np.where(smoker, 1 + obese, 0).astype(np.intp)
        return groups
    if len(names) == 2:
        two: npt.NDArray[np.intp] = (smoker if names[1] == "smoker" else obese).astype(np.intp)
        return two
    return np.zeros(X.shape[0], dtype=np.intp)


def assign_group_row(row: Sequence[float], names: Sequence[str]) -> int:
    """Scalar twin of :func:`assign_groups` for the one-record hot path."""
    smoker, obese = row[SMOKER_COL] == 1.0, row[BMI_COL] >= OBESE_BMI
    if len(names) == 3:
        return (1 + int(obese)) if smoker else 0
    if len(names) == 2:
        return int(smoker) if names[1] == "smoker" else int(obese)
    return 0


def shortest_window(residuals: Array, level: float, steps: int = 11) -> tuple[float, float]:
    """The narrowest conformal window [q(a), q(a + level)] over a coarse grid of tails a.

    Ranks follow split conformal (lower floor((n+1)a), upper ceil((n+1)(a+level))). Only a
    few tail splits are tried: picking the single narrowest of all n windows would fit the
    calibration sample's quirks and under-cover new patients. The mean forecast can sit
    above most outcomes (a few patients cost far more), so windows are stretched to hold it.
    """
    r = np.sort(np.asarray(residuals, dtype=np.float64))
    n = len(r)
    need = math.ceil((n + 1) * level)
    if need > n:
        return -math.inf, math.inf
    q = float(np.sort(np.abs(r))[need - 1])
    best: tuple[float, float] = (-q, q)  # the classic symmetric band is always a candidate
    for a in np.linspace(0.0, 1.0 - level, steps):
        lo_rank = max(math.floor((n + 1) * a), 1)
        hi_rank = max(math.ceil((n + 1) * (a + level)), lo_rank + need - 1)
        if hi_rank > n:
            continue
        # Stretched to hold 0 so the interval always contains the point forecast.
        window = (min(float(r[lo_rank - 1]), 0.0), max(float(r[hi_rank - 1]), 0.0))
        if window[1] - window[0] < best[1] - best[0]:
            best = window
    return best


@dataclass(frozen=True)
class ConformalBands:
    """Per-group residual windows: interval = [pred + lo, pred + hi], floored at zero."""

    level: float
    groups: list[str]
    lo: list[float]
    hi: list[float]

    @classmethod
    def fit(cls, residuals: Array, X: Array, level: float, excluded: Sequence[str] = ()) -> ConformalBands:
        names = group_names(excluded)
        g = assign_groups(X, names)
        pooled = shortest_window(residuals, level)
        lo, hi = [], []
        for k in range(len(names)):
            r = residuals[g == k]
            window = shortest_window(r, level) if len(r) >= MIN_GROUP else pooled
            lo.append(window[0])
            hi.append(window[1])
        return cls(level, names, lo, hi)

    def apply(self, pred: Array, X: Array) -> tuple[Array, Array]:
        g = assign_groups(X, self.groups)
        lo, hi = np.asarray(self.lo)[g], np.asarray(self.hi)[g]
        return np.maximum(pred + lo, 0.0), np.maximum(pred + hi, 0.0)

    def apply_row(self, pred: float, row: Sequence[float]) -> tuple[float, float]:
        k = assign_group_row(row, self.groups)
        return max(pred + self.lo[k], 0.0), max(pred + self.hi[k], 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "groups": self.groups, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConformalBands:
        groups = list(data["groups"])
        if len(data["lo"]) != len(groups) or len(data["hi"]) != len(groups):
            raise ValueError(f"interval has {len(groups)} groups but {len(data['lo'])}/{len(data['hi'])} windows")
        known = [group_names(ex) for ex in ((), ("smoker",), ("bmi",), ("smoker", "bmi"))]
        if groups not in known:
            raise ValueError(f"unknown interval groups {groups}")
        return cls(
            float(data["level"]),
            list(data["groups"]),
            list(map(float, data["lo"])),
            list(map(float, data["hi"])),
        )
