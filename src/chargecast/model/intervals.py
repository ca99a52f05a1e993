"""Predictive distributions: per-group residual quantiles, central intervals and book totals.

Charges are skewed: most patients sit in a tight band just below the mean forecast and
about one in ten carries large extra charges that no input predicts. So the forecast is
the conditional *mean* (what to budget, and what totals add up), and the uncertainty is a
whole distribution of ``actual - forecast`` per group, stored as a quantile grid. Every
interval is equal-tailed: at level L it runs from the (1-L)/2 to the (1+L)/2 quantile, so
misses fall on both sides in equal shares, and the width grows smoothly with the level.

Groups are the data's risk regimes: non-smokers by age band (their extra-charge tail and
base level shift with age), smokers by obesity. Training fills the grid from jackknife
residuals of the refit model (see :mod:`chargecast.training.calibration`); this module is what
serving needs, numpy only, with scalar twins for the one-record hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from chargecast.model.features import OBESE_BMI
from chargecast.schema import FEATURES

Array = npt.NDArray[np.float64]
SMOKER_COL, BMI_COL, AGE_COL = FEATURES.index("smoker"), FEATURES.index("bmi"), FEATURES.index("age")
AGE_BANDS = (30.0, 45.0)  # non-smokers: 18-29, 30-44, 45+
MIN_GROUP = 30  # below this many calibration residuals a group borrows the pooled distribution
GRID_STEP = 0.001
GRID = np.round(np.arange(1, 1000) * GRID_STEP, 3)  # levels 0.001 ... 0.999 where quantiles are stored
MONTE_CARLO_BOOK = 32  # books up to this size get a simulated total; larger ones Cornish-Fisher
MONTE_CARLO_DRAWS = 2000
LEVEL_CACHE = 4096  # distinct quantile levels whose per-group offsets a distribution remembers
_NORMAL = NormalDist()


def group_names(excluded: Sequence[str] = ()) -> list[str]:
    """Group labels, using only the inputs the model may use."""
    ages = ["age 18-29", "age 30-44", "age 45+"] if "age" not in excluded else []
    obesity = ["bmi < 30", "bmi >= 30"] if "bmi" not in excluded else []
    if "smoker" in excluded:
        return ages or ["all"]
    non = [f"non-smoker, {a}" for a in ages] or ["non-smoker"]
    smo = [f"smoker, {b}" for b in obesity] or ["smoker"]
    return non + smo


def _layout(names: Sequence[str]) -> tuple[int, int, bool]:
    """(age bands among non-smokers, smoker groups, whether smoking splits at all)."""
    if names and not names[0].startswith("non-smoker"):
        return (len(names) if len(names) == 3 else 1), 0, False
    n_non = sum(1 for n in names if n.startswith("non-smoker"))
    return n_non, len(names) - n_non, True


def assign_groups(X: Array, names: Sequence[str]) -> npt.NDArray[np.intp]:
    """Index into ``names`` for every encoded row."""
    n_non, n_smo, split = _layout(names)
    groups: npt.NDArray[np.intp]
    if n_non == 3:
        groups = np.searchsorted(np.asarray(AGE_BANDS), X[:, AGE_COL], side="right").astype(np.intp, copy=False)
    else:
        groups = np.zeros(X.shape[0], dtype=np.intp)
    if split:
        smokers = (X[:, BMI_COL] >= OBESE_BMI).astype(np.intp) if n_smo == 2 else np.zeros(X.shape[0], np.intp)
        smokers += n_non
        np.copyto(groups, smokers, where=X[:, SMOKER_COL] == 1.0)
    return groups


RowGrouper = Callable[[Sequence[float]], int]


@cache
def row_grouper(names: tuple[str, ...]) -> RowGrouper:
    """Scalar twin of :func:`assign_groups` for the one-record hot path, built once per layout.

    The layout is decided here, not on every call: the returned function only compares the
    row's inputs with constants it holds in its closure.
    """
    n_non, n_smo, split = _layout(names)
    age, bmi, smoker = AGE_COL, BMI_COL, SMOKER_COL
    young, middle = AGE_BANDS
    obese_bmi = OBESE_BMI
    lean, heavy = n_non, n_non + (1 if n_smo == 2 else 0)  # smokers below / at or above bmi 30

    if not split and n_non == 3:

        def by_age(row: Sequence[float]) -> int:
            a = row[age]
            return 0 if a < young else 1 if a < middle else 2

        return by_age
    if not split:
        return lambda row: 0
    if n_non == 3:

        def full(row: Sequence[float]) -> int:
            if row[smoker] == 1.0:
                return heavy if row[bmi] >= obese_bmi else lean
            a = row[age]
            return 0 if a < young else 1 if a < middle else 2

        return full

    def by_smoking(row: Sequence[float]) -> int:
        if row[smoker] == 1.0:
            return heavy if row[bmi] >= obese_bmi else lean
        return 0

    return by_smoking


def assign_group_row(row: Sequence[float], names: Sequence[str]) -> int:
    """Scalar twin of :func:`assign_groups` (hot paths hold :func:`row_grouper`'s function)."""
    return row_grouper(tuple(names))(row)


def check_levels(levels: Sequence[float]) -> None:
    for q in levels:
        if not (isinstance(q, float | int) and 0.0 < q < 1.0):
            raise ValueError(f"quantile level {q!r} must be a number strictly between 0 and 1")


@dataclass(frozen=True)
class ResidualDistribution:
    """Per-group quantiles (and moments) of ``actual - forecast``.

    ``grid[k][j]`` is group k's residual quantile at level ``GRID[j]``; levels between grid
    points are interpolated linearly and levels beyond 0.001/0.999 take the end values (the
    data cannot say more about the far tails). Forecast quantiles are ``pred + grid``,
    floored at zero because charges are never negative.
    """

    level: float
    groups: list[str]
    grid: list[list[float]]
    mean: list[float]
    var: list[float]
    third: list[float]  # third central moment: the skew that a book's total inherits
    counts: list[int]
    # Built once at load for the one-record hot path (see __post_init__).
    _group_row: RowGrouper = field(init=False, repr=False, compare=False)
    _default: list[tuple[float, float]] = field(init=False, repr=False, compare=False)
    _by_level: dict[float, tuple[float, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = len(self.groups)
        if not (len(self.grid) == len(self.mean) == len(self.var) == len(self.third) == len(self.counts) == k):
            raise ValueError(f"interval has {k} groups but per-group fields of other lengths")
        for g in self.grid:
            if len(g) != len(GRID) or not all(math.isfinite(v) for v in g):
                raise ValueError(f"each group's quantile grid needs {len(GRID)} finite values")
            if any(b < a for a, b in pairwise(g)):
                raise ValueError("a group's quantile grid must not decrease")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"interval level {self.level} must lie strictly between 0 and 1")
        # What one record needs, decided once: its group's function for this layout, the
        # default interval's offsets, and every group's offsets at the levels asked so far.
        object.__setattr__(self, "_group_row", row_grouper(tuple(self.groups)))
        object.__setattr__(self, "_by_level", {})
        lo, hi = (self._at(t) for t in self._tails(None))
        object.__setattr__(self, "_default", list(zip(lo, hi, strict=True)))

    # -- quantile function -----------------------------------------------------------
    def _offset(self, k: int, q: float) -> float:
        pos = (q - GRID_STEP) / GRID_STEP
        g = self.grid[k]
        if pos <= 0:
            return g[0]
        if pos >= len(g) - 1:
            return g[-1]
        i = int(pos)
        frac = pos - i
        return g[i] + frac * (g[i + 1] - g[i])

    def _at(self, q: float) -> tuple[float, ...]:
        """Every group's offset at level ``q``, remembered (up to LEVEL_CACHE levels) for the next call."""
        found = self._by_level.get(q)
        if found is None:
            found = tuple(float(self._offset(k, q)) for k in range(len(self.groups)))
            if len(self._by_level) < LEVEL_CACHE:
                self._by_level[q] = found
        return found

    def offsets(self, k: int, levels: Sequence[float]) -> list[float]:
        return [self._offset(k, q) for q in levels]

    def quantiles_row(self, pred: float, row: Sequence[float], levels: Sequence[float]) -> list[float]:
        k = self._group_row(row)
        known, at = self._by_level.get, self._at
        out = []
        for q in levels:
            v = pred + (known(q) or at(q))[k]
            out.append(0.0 if v < 0.0 else v)  # max(v, 0.0), without the call
        return out

    def quantiles(self, pred: Array, X: Array, levels: Sequence[float]) -> Array:
        """(n, len(levels)) forecast quantiles."""
        g = assign_groups(X, self.groups)
        table = np.array([self._at(q) for q in levels], dtype=np.float64).T.reshape(len(self.groups), len(levels))
        out: Array = np.maximum(pred[:, None] + table[g], 0.0)
        return out

    # -- central intervals -------------------------------------------------------------
    def _tails(self, level: float | None) -> tuple[float, float]:
        level = self.level if level is None else level
        return (1 - level) / 2, (1 + level) / 2

    def apply_row(self, pred: float, row: Sequence[float], level: float | None = None) -> tuple[float, float]:
        k = self._group_row(row)
        if level is None:
            lo, hi = self._default[k]
        else:
            lo, hi = (self._at(t)[k] for t in self._tails(level))
        lo, hi = pred + lo, pred + hi
        return (0.0 if lo < 0.0 else lo), (0.0 if hi < 0.0 else hi)  # max(·, 0.0), without the calls

    def apply(self, pred: Array, X: Array, level: float | None = None) -> tuple[Array, Array]:
        g = assign_groups(X, self.groups)
        out = []
        for t in self._tails(level):
            bound = np.asarray(self._at(t)).take(g)  # one contiguous array per end
            bound += pred
            out.append(np.maximum(bound, 0.0, out=bound))
        return out[0], out[1]

    # -- a book's total ------------------------------------------------------------------
    def total(self, pred: Array, X: Array, level: float | None = None) -> tuple[float, float, float]:
        """Sum of forecasts and a central interval for the sum of actual charges.

        Patients' deviations are independent draws from their groups' distributions; the
        model's own error is a shared shift of each group's level, with variance
        ``var_g / n_g`` (what estimating that group's mean from its calibration rows
        costs). Small books are simulated from the quantile grids (their sum is still
        skewed); large ones use the cumulants with a Cornish-Fisher skew correction.
        """
        charges = float(np.sum(pred))
        if len(pred) == 0:
            return 0.0, 0.0, 0.0
        g = assign_groups(X, self.groups)
        counts = np.bincount(g, minlength=len(self.groups)).astype(np.float64)
        if len(pred) > MONTE_CARLO_BOOK:
            return self.total_from_counts(charges, counts, level)
        low, high = self._simulated_total(g, self._model_var(counts), self._tails(level))
        return charges, max(charges + low, 0.0), max(charges + high, 0.0)

    def total_from_counts(
        self, charges: float, counts: Sequence[float] | Array, level: float | None = None
    ) -> tuple[float, float, float]:
        """:meth:`total` of a book of more than ``MONTE_CARLO_BOOK`` patients from what a stream
        can add up chunk by chunk: the sum of forecasts and the patients per group."""
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (len(self.groups),) or c.sum() <= MONTE_CARLO_BOOK:
            raise ValueError(f"need {len(self.groups)} group counts summing to more than {MONTE_CARLO_BOOK}")
        var = np.asarray(self.var)
        mean = float(c @ np.asarray(self.mean))
        k2 = float(c @ var) + self._model_var(c)
        skew = float(c @ np.asarray(self.third)) / k2**1.5 if k2 > 0 else 0.0
        sd = math.sqrt(k2)
        low, high = (mean + sd * _cornish_fisher(q, skew) for q in self._tails(level))
        return charges, max(charges + low, 0.0), max(charges + high, 0.0)

    def _model_var(self, counts: Array) -> float:
        var = np.asarray(self.var)
        return float(np.sum(counts**2 * var / np.maximum(np.asarray(self.counts, dtype=np.float64), 1.0)))

    def _simulated_total(
        self, g: npt.NDArray[np.intp], model_var: float, tails: tuple[float, float]
    ) -> tuple[float, float]:
        rng = np.random.default_rng(20240601)  # fixed: the same book always gets the same answer
        grid = np.asarray(self.grid)
        u = rng.uniform(GRID[0], GRID[-1], size=(MONTE_CARLO_DRAWS, len(g)))
        pos = (u - GRID_STEP) / GRID_STEP
        i = np.minimum(pos.astype(np.intp), len(GRID) - 2)
        frac = pos - i
        rows = grid[g]  # (n, grid)
        cols = np.arange(len(g))
        draws = rows[cols, i] + frac * (rows[cols, i + 1] - rows[cols, i])
        sums = draws.sum(axis=1) + rng.normal(0.0, math.sqrt(model_var), MONTE_CARLO_DRAWS)
        low, high = np.quantile(sums, tails)
        return float(low), float(high)

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "residual_quantiles",
            "level": self.level,
            "groups": self.groups,
            "grid_levels": [float(GRID[0]), float(GRID[-1]), GRID_STEP],
            "grid": self.grid,
            "mean": self.mean,
            "var": self.var,
            "third": self.third,
            "counts": self.counts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResidualDistribution:
        if data.get("kind") != "residual_quantiles":
            raise ValueError(f"unknown interval kind {data.get('kind')!r}")
        if data.get("grid_levels") != [float(GRID[0]), float(GRID[-1]), GRID_STEP]:
            raise ValueError("interval quantile grid is not the one this chargecast reads")
        groups = list(data["groups"])
        known = [group_names(ex) for ex in _EXCLUSIONS]
        if groups not in known:
            raise ValueError(f"unknown interval groups {groups}")
        return cls(
            float(data["level"]),
            groups,
            [list(map(float, g)) for g in data["grid"]],
            list(map(float, data["mean"])),
            list(map(float, data["var"])),
            list(map(float, data["third"])),
            list(map(int, data["counts"])),
        )


_EXCLUSIONS = [
    tuple(f for f, keep in zip(("smoker", "age", "bmi"), bits, strict=True) if not keep)
    for bits in ((a, b, c) for a in (True, False) for b in (True, False) for c in (True, False))
]


def _cornish_fisher(q: float, skew: float) -> float:
    """Standardised quantile of a mildly skewed sum (first-order Cornish-Fisher)."""
    z = _NORMAL.inv_cdf(q)
    return z + (z * z - 1.0) * skew / 6.0
