"""The training data's reference distribution, stored in the artifact for drift monitoring.

Drift asks whether today's patients are like the ones the model learned from, so the
artifact keeps what that comparison needs and nothing that would re-identify a patient:
per numeric input a quantile grid (fine enough for Wasserstein-1), mean and sd, and
decile bins with their shares (for PSI); per category its share of each schema choice.
The inputs come from :data:`chargecast.schema.FIELDS`, the single source of truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from chargecast.schema import FIELDS, CategoryField

Array = npt.NDArray[np.float64]
QUANTILES: Final = 201  # levels 0, 0.005, ..., 1: Wasserstein-1 off the grid is within ~0.5% of the sample's
BIN_LEVELS: Final = tuple(k / 10 for k in range(1, 10))  # decile edges for PSI
SHARE_SUM_TOLERANCE: Final = 1e-6


@dataclass(frozen=True)
class NumberReference:
    """One numeric input: ``quantiles`` at equally spaced levels from 0 to 1, and PSI bins.

    ``edges`` split the line into ``len(edges) + 1`` bins, ``x < edges[0]``,
    ``edges[i-1] <= x < edges[i]``, ``x >= edges[-1]``; ``shares`` are the training rows in each.
    """

    mean: float
    sd: float
    quantiles: tuple[float, ...]
    edges: tuple[float, ...]
    shares: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    rows: int
    numbers: dict[str, NumberReference]
    categories: dict[str, dict[str, float]]  # input -> choice -> share of training rows


def bin_index(edges: Array, values: Array) -> npt.NDArray[np.intp]:
    """The PSI bin of every value (see :class:`NumberReference`)."""
    return np.searchsorted(edges, values, side="right").astype(np.intp)


def build(X: Array) -> dict[str, Any]:
    """The JSON-ready reference of an encoded (n, 6) training matrix."""
    numbers: dict[str, Any] = {}
    categories: dict[str, Any] = {}
    for j, spec in enumerate(FIELDS):
        col = np.asarray(X[:, j], dtype=np.float64)
        if isinstance(spec, CategoryField):
            counts = np.bincount(col.astype(np.intp), minlength=len(spec.choices))[: len(spec.choices)]
            categories[spec.name] = {c: float(n) / len(col) for c, n in zip(spec.choices, counts.tolist(), strict=True)}
            continue
        edges = np.unique(np.quantile(col, BIN_LEVELS))
        shares = np.bincount(bin_index(edges, col), minlength=len(edges) + 1) / len(col)
        numbers[spec.name] = {
            "mean": float(col.mean()),
            "sd": float(col.std(ddof=1)) if len(col) > 1 else 0.0,
            "quantiles": [float(v) for v in np.quantile(col, np.linspace(0.0, 1.0, QUANTILES))],
            "edges": [float(v) for v in edges],
            "shares": [float(v) for v in shares],
        }
    return {"rows": len(X), "quantile_levels": "linspace(0, 1, n)", "numbers": numbers, "categories": categories}


def _rule(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"field '{name}' {rule}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(name: str, value: Any, *, increasing: bool = False) -> tuple[float, ...]:
    ok = isinstance(value, list) and len(value) > 0 and all(_finite(v) for v in value)
    _rule(name, ok, "must be a non-empty list of finite numbers")
    out = tuple(float(v) for v in value)
    _rule(name, not increasing or all(a <= b for a, b in pairwise(out)), "must not decrease")
    return out


def _shares(name: str, values: tuple[float, ...]) -> None:
    _rule(name, all(v >= 0 for v in values), "must hold shares >= 0")
    _rule(name, abs(sum(values) - 1.0) <= SHARE_SUM_TOLERANCE, "must sum to 1")


def _number(name: str, spec: Any) -> NumberReference:
    _rule(name, isinstance(spec, dict), "must be an object")
    for key in ("mean", "sd"):
        _rule(f"{name}.{key}", _finite(spec.get(key)), "must be a finite number")
    _rule(f"{name}.sd", spec["sd"] >= 0, "must be >= 0")
    quantiles = _numbers(f"{name}.quantiles", spec.get("quantiles"), increasing=True)
    _rule(f"{name}.quantiles", len(quantiles) >= 2, "must hold at least 2 quantiles (levels 0 and 1)")
    edges = _numbers(f"{name}.edges", spec.get("edges"), increasing=True)
    shares = _numbers(f"{name}.shares", spec.get("shares"))
    _rule(f"{name}.shares", len(shares) == len(edges) + 1, "must hold one share more than there are edges")
    _shares(f"{name}.shares", shares)
    return NumberReference(float(spec["mean"]), float(spec["sd"]), quantiles, edges, shares)


def parse(spec: Any, where: str = "reference") -> Reference:
    """Check a stored reference field by field; ``ValueError`` names the field and the rule."""
    _rule(where, isinstance(spec, dict), "must be an object")
    rows = spec.get("rows")
    _rule(f"{where}.rows", isinstance(rows, int) and not isinstance(rows, bool) and rows > 0, "must be a count > 0")
    for part in ("numbers", "categories"):
        _rule(f"{where}.{part}", isinstance(spec.get(part), dict), "must be an object")
    numbers: dict[str, NumberReference] = {}
    categories: dict[str, dict[str, float]] = {}
    for field in FIELDS:
        if isinstance(field, CategoryField):
            name = f"{where}.categories.{field.name}"
            shares = spec["categories"].get(field.name)
            ok = isinstance(shares, dict) and set(shares) == set(field.choices)
            _rule(name, ok, "must give a share for each of " + ", ".join(field.choices))
            _rule(name, all(_finite(v) for v in shares.values()), "must hold finite numbers")
            _shares(name, tuple(float(v) for v in shares.values()))
            categories[field.name] = {c: float(shares[c]) for c in field.choices}
        else:
            _rule(f"{where}.numbers.{field.name}", field.name in spec["numbers"], "is missing")
            numbers[field.name] = _number(f"{where}.numbers.{field.name}", spec["numbers"][field.name])
    return Reference(rows, numbers, categories)
