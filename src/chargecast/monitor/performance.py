"""Realised performance: how the logged forecasts did once the actual charges came in.

The figures are training's own (:func:`chargecast.training.scoring.point_scores` for MAE and
total bias; coverage and tails as :func:`chargecast.training.train.interval_by_group` counts
them) over the same groups: issue #7's evaluation groups
(:data:`chargecast.training.scoring.GROUPS`) and the interval's calibration groups
(:func:`chargecast.model.intervals.group_names`), then by month of forecast and by model
version. Numpy only; serving never imports it (its gauge needs coverage alone, see
:mod:`chargecast.monitor.window`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from chargecast.audit.store import Forecast
from chargecast.model.intervals import assign_groups, group_names
from chargecast.schema import FIELDS, CategoryField
from chargecast.training.scoring import group_masks

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
FEW: Final = 30  # a group with fewer realised records is marked: its coverage moves by 3+ points per record


@dataclass(frozen=True)
class Figures:
    """One group's realised figures (``nan`` when it has no records)."""

    records: int
    mae: float  # mean |forecast - actual|, USD
    bias: float  # (Σ forecast - Σ actual) / Σ actual: + means forecasts ran high
    coverage: float  # share of actuals inside [low, high]
    below: float  # share under low
    above: float  # share over high
    width: float  # mean high - low, USD
    level: float  # the nominal level of those intervals (their mean if levels differ)
    forecast_total: float
    actual_total: float


@dataclass(frozen=True)
class Realised:
    """Forecasts joined with actual charges, as arrays."""

    X: Array  # encoded inputs (n, 6)
    charges: Array
    low: Array
    high: Array
    level: Array
    actual: Array
    month: npt.NDArray[np.str_]  # "YYYY-MM" of the forecast, UTC
    version: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.actual)


def _encode(inputs: dict[str, float | str]) -> list[float]:
    out = []
    for spec in FIELDS:
        value = inputs.get(spec.name)
        if isinstance(spec, CategoryField):
            out.append(float(spec.choices.index(value)) if value in spec.choices else math.nan)
        else:
            out.append(float(value) if isinstance(value, int | float) else math.nan)
    return out


def collect(pairs: Iterable[tuple[Forecast, float]]) -> Realised:
    """Arrays from :meth:`chargecast.audit.store.Store.realised`'s pairs."""
    rows: list[list[float]] = []
    numbers: list[tuple[float, float, float, float, float]] = []
    months: list[str] = []
    versions: list[str] = []
    for f, paid in pairs:
        rows.append(_encode(f.inputs))
        numbers.append((f.charges, f.low, f.high, f.level, float(paid)))
        months.append(f"{f.time:%Y-%m}")
        versions.append(f.model_version)
    table = np.asarray(numbers, np.float64).reshape(-1, 5)
    X = np.asarray(rows, np.float64).reshape(-1, len(FIELDS))
    charges, low, high, level, actual = (np.ascontiguousarray(c) for c in table.T)
    return Realised(
        X, charges, low, high, level, actual, np.asarray(months, dtype=str), np.asarray(versions, dtype=str)
    )


def figures(r: Realised, mask: Mask | None = None) -> Figures:
    m = np.ones(len(r), bool) if mask is None else mask
    n = int(m.sum())
    if not n:
        nan = math.nan
        return Figures(0, nan, nan, nan, nan, nan, nan, nan, 0.0, 0.0)
    y, pred = r.actual[m], r.charges[m]
    total = float(y.sum())
    return Figures(
        records=n,
        mae=float(np.mean(np.abs(pred - y))),
        bias=float((pred.sum() - total) / total) if total > 0 else math.nan,
        coverage=float(np.mean((y >= r.low[m]) & (y <= r.high[m]))),
        below=float(np.mean(y < r.low[m])),
        above=float(np.mean(y > r.high[m])),
        width=float(np.mean(r.high[m] - r.low[m])),
        level=float(np.mean(r.level[m])),
        forecast_total=float(pred.sum()),
        actual_total=total,
    )


def _by_value(r: Realised, values: npt.NDArray[np.str_]) -> list[tuple[str, Figures]]:
    return [(str(v), figures(r, values == v)) for v in sorted(set(values.tolist()))]


def breakdown(r: Realised) -> dict[str, list[tuple[str, Figures]]]:
    """Every table of the report: overall, evaluation groups, interval groups, month, version."""
    known = np.asarray(
        ~np.isnan(r.X).any(axis=1), dtype=bool
    )  # a record whose inputs the schema no longer reads joins no group
    masks = group_masks(np.where(known[:, None], r.X, -1.0))
    evaluation = [(name, figures(r, mask & known)) for name, mask in masks.items()]
    names = group_names()
    calibration = assign_groups(np.where(known[:, None], r.X, 0.0), names)
    interval = [(name, figures(r, (calibration == k) & known)) for k, name in enumerate(names)]
    return {
        "overall": [("all", figures(r))],
        "evaluation group": evaluation,
        "interval group": interval,
        "month": _by_value(r, r.month),
        "model version": _by_value(r, r.version),
    }
