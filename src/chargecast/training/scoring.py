"""How forecasts and their intervals are scored: one implementation for training, report and bench.

Numpy only, so the report can import it without cost. The evaluation groups are issue
#7's (smoker / non-smoker, three age bands, obese or not), defined on the inputs whether
or not the model uses them; they are not the interval's calibration groups.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from chargecast.model.features import OBESE_BMI
from chargecast.schema import FEATURES

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
AGE_COL, SMOKER_COL, BMI_COL = FEATURES.index("age"), FEATURES.index("smoker"), FEATURES.index("bmi")
GROUPS = ("smoker", "non-smoker", "age 18-29", "age 30-44", "age 45+", "bmi >= 30", "bmi < 30")


def group_masks(X: Array) -> dict[str, Mask]:
    """Each evaluation group's rows of an encoded matrix, in :data:`GROUPS` order."""
    smoker, age, obese = X[:, SMOKER_COL] == 1.0, X[:, AGE_COL], X[:, BMI_COL] >= OBESE_BMI
    return {
        "smoker": smoker,
        "non-smoker": ~smoker,
        "age 18-29": age < 30,
        "age 30-44": (age >= 30) & (age < 45),
        "age 45+": age >= 45,
        "bmi >= 30": obese,
        "bmi < 30": ~obese,
    }


def point_scores(y: Array, pred: Array) -> dict[str, float]:
    """R², MAE, RMSE and total bias (sum of forecasts against sum of charges; + = over)."""
    err = pred - y
    return {
        "r2": float(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2)),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "total_bias": float(err.sum() / y.sum()),
    }


def winkler(y: Array, low: Array, high: Array, alpha: float) -> float:
    """Interval (Winkler) score: width plus 2/alpha times how far y falls outside; lower is better."""
    if not len(y):
        return math.nan
    miss = np.maximum(low - y, 0.0) + np.maximum(y - high, 0.0)
    return float(np.mean(high - low + (2 / alpha) * miss))


def _mean(values: Array | Mask) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def interval_scores(y: Array, X: Array, low: Array, high: Array, alpha: float) -> dict[str, float]:
    """Coverage, share below and above, Winkler score at ``alpha`` and mean width, overall; and
    coverage ("group G"), share below ("below G") and above ("above G") in each evaluation group,
    with the lowest group coverage as "worst group"."""
    inside, below, above = (y >= low) & (y <= high), y < low, y > high
    out = {
        "coverage": _mean(inside),
        "below": _mean(below),
        "above": _mean(above),
        "winkler": winkler(y, low, high, alpha),
        "width": _mean(high - low),
    }
    coverage = {}
    for name, m in group_masks(X).items():
        coverage[name] = _mean(inside[m])
        out |= {f"group {name}": coverage[name], f"below {name}": _mean(below[m]), f"above {name}": _mean(above[m])}
    out["worst group"] = min((v for v in coverage.values() if not math.isnan(v)), default=math.nan)
    return out


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    v = list(values)
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0
