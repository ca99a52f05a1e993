"""Drift statistics: is a window of logged inputs like the training data? numpy only.

Serving imports this module for its gauges, so it must never pull in scipy, pandas or
matplotlib (an import-linter contract holds it to that). The figures, per input of
:data:`chargecast.schema.FIELDS`:

- numbers: **Wasserstein-1** between the window's values and the training reference,
  divided by the reference's standard deviation, so 0.5 means "the distribution moved by
  half a training sd" whatever the unit. The reference is its quantile grid read as a
  weighted sample (trapezoid weights on the levels 0 ... 1); :func:`wasserstein` is
  ``scipy.stats.wasserstein_distance`` (tests hold the two together).
- categories: **Jensen-Shannon distance** in base 2, the square root of the divergence,
  so it lies in [0, 1] (``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
- both: **PSI** (population stability index) over the reference's bins (deciles for
  numbers, the schema's choices for categories), each share floored at ``PSI_FLOOR`` so an
  empty bin costs a bounded amount instead of infinity.

Every (input, statistic) has an explicit threshold; see ``DEFAULT_THRESHOLDS`` for why
these values, and :func:`parse_thresholds` for overriding them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from chargecast.model.reference import NumberReference, Reference, bin_index
from chargecast.schema import FIELD_BY_NAME, FIELDS, CategoryField

Array = npt.NDArray[np.float64]
WASSERSTEIN, JENSEN_SHANNON, PSI = "wasserstein", "jensen_shannon", "psi"
PSI_FLOOR: Final = 1e-4  # a share below 0.01% counts as 0.01% (as Evidently does): ln(0) would be infinite
# Defaults, from each figure's noise on windows drawn like the training data versus a 0.5 sd
# shift of one input (tests/test_drift.py; figures in docs/monitoring.md). At 5,000 records
# noise stays below 0.035 (normalised Wasserstein), 0.011 (JS) and 0.003 (PSI); the shift
# gives 0.48-0.52 (Wasserstein), 0.19-0.33 (JS, a category's share moved by half its
# indicator's sd) and 0.2-1.6 (PSI; 0.2 is the customary "significant shift" line). Noise
# grows as 1/sqrt(n): Wasserstein reaches 0.09 at 1,000 records and 0.14 at 200, so a
# window under MIN_RECORDS is reported with a warning rather than trusted.
DEFAULT_THRESHOLDS: Final[Mapping[str, float]] = {WASSERSTEIN: 0.1, JENSEN_SHANNON: 0.1, PSI: 0.2}
MIN_RECORDS: Final = 1000


def statistics(feature: str) -> tuple[str, ...]:
    """The statistics computed for an input, its primary one (what ``age=0.15`` sets) first."""
    if isinstance(FIELD_BY_NAME[feature], CategoryField):
        return (JENSEN_SHANNON, PSI)
    return (WASSERSTEIN, PSI)


Thresholds = dict[tuple[str, str], float]


def default_thresholds() -> Thresholds:
    return {(f.name, s): DEFAULT_THRESHOLDS[s] for f in FIELDS for s in statistics(f.name)}


def parse_thresholds(items: Iterable[str]) -> dict[tuple[str, str], float]:
    """``FEATURE=V`` (the input's primary statistic) or ``FEATURE.STATISTIC=V``, V a number > 0.

    ``ValueError`` names the item and the rule it broke (an unknown input or statistic too).
    """
    out: dict[tuple[str, str], float] = {}
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        feature, _, statistic = name.strip().partition(".")
        if not sep:
            raise ValueError(f"threshold {item!r}: must be FEATURE=VALUE or FEATURE.STATISTIC=VALUE")
        if feature not in FIELD_BY_NAME:
            raise ValueError(f"threshold {item!r}: unknown feature {feature!r} (one of {', '.join(FIELD_BY_NAME)})")
        allowed = statistics(feature)
        statistic = statistic or allowed[0]
        if statistic not in allowed:
            raise ValueError(f"threshold {item!r}: {feature} has statistics {', '.join(allowed)}, not {statistic!r}")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"threshold {item!r}: the value must be a finite number > 0")
        out[(feature, statistic)] = number
    return out


def split_thresholds(text: str) -> list[str]:
    """A settings string ``"age=0.15, region.psi=0.3"`` as items for :func:`parse_thresholds`."""
    return [part for part in text.replace(",", " ").split() if part]


# -- the statistics --------------------------------------------------------------------
def wasserstein(u: Array, v: Array, u_weights: Array | None = None, v_weights: Array | None = None) -> float:
    """Wasserstein-1 between two weighted samples: the area between their CDFs."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    u_order, v_order = np.argsort(u), np.argsort(v)
    values = np.sort(np.concatenate([u, v]))
    deltas = np.diff(values)
    cdfs = []
    for sample, order, weights in ((u, u_order, u_weights), (v, v_order, v_weights)):
        w = np.ones(len(sample)) if weights is None else np.asarray(weights, np.float64)
        cumulative = np.concatenate([[0.0], np.cumsum(w[order])])
        cdfs.append(cumulative[np.searchsorted(sample[order], values[:-1], side="right")] / cumulative[-1])
    return float(np.sum(np.abs(cdfs[0] - cdfs[1]) * deltas))


def grid_weights(m: int) -> Array:
    """Trapezoid weights of ``m`` quantiles at equally spaced levels 0 ... 1."""
    w = np.full(m, 1.0 / (m - 1))
    w[[0, -1]] /= 2
    return w


def normalised_wasserstein(values: Array, ref: NumberReference) -> float:
    """Wasserstein-1 from the reference's quantile grid, in reference standard deviations."""
    grid = np.asarray(ref.quantiles)
    distance = wasserstein(values, grid, None, grid_weights(len(grid)))
    return distance / ref.sd if ref.sd > 0 else distance


def psi(expected: Sequence[float] | Array, actual: Sequence[float] | Array) -> float:
    """Σ (a - e) ln(a / e) over bins, every share floored at ``PSI_FLOOR``."""
    e = np.maximum(np.asarray(expected, np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon(p: Sequence[float] | Array, q: Sequence[float] | Array) -> float:
    """Jensen-Shannon *distance*, base 2: sqrt of the divergence, in [0, 1]."""
    p_ = np.asarray(p, np.float64) / np.sum(p)
    q_ = np.asarray(q, np.float64) / np.sum(q)
    m = (p_ + q_) / 2

    def kl(a: Array) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max((kl(p_) + kl(q_)) / 2, 0.0))


# -- a window of logged inputs ---------------------------------------------------------
@dataclass
class Window:
    """Logged inputs: numbers as values, categories as counts per schema choice."""

    numbers: dict[str, Array]
    counts: dict[str, Array]
    rows: int = 0
    unknown: dict[str, int] = field(default_factory=dict)  # category values outside the schema, skipped


def window_from_inputs(inputs: Iterable[Mapping[str, float | str]]) -> Window:
    """A window from logged records (``Forecast.inputs``: numbers as float, categories as text)."""
    numbers: dict[str, list[float]] = {f.name: [] for f in FIELDS if not isinstance(f, CategoryField)}
    index = {f.name: {c: k for k, c in enumerate(f.choices)} for f in FIELDS if isinstance(f, CategoryField)}
    counts = {name: np.zeros(len(choices)) for name, choices in index.items()}
    unknown: dict[str, int] = {}
    rows = 0
    for record in inputs:
        rows += 1
        for name, values in numbers.items():
            value = record.get(name)
            if isinstance(value, int | float) and math.isfinite(value):
                values.append(float(value))
        for name, choices in index.items():
            k = choices.get(str(record.get(name)))
            if k is None:
                unknown[name] = unknown.get(name, 0) + 1
            else:
                counts[name][k] += 1
    return Window({k: np.asarray(v, np.float64) for k, v in numbers.items()}, counts, rows, unknown)


def window_from_encoded(X: Array) -> Window:
    """A window from an encoded (n, 6) matrix (tests, benchmarks, batch files)."""
    numbers, counts = {}, {}
    for j, spec in enumerate(FIELDS):
        if isinstance(spec, CategoryField):
            counts[spec.name] = np.bincount(X[:, j].astype(np.intp), minlength=len(spec.choices)).astype(np.float64)
        else:
            numbers[spec.name] = np.asarray(X[:, j], np.float64)
    return Window(numbers, counts, len(X))


# -- the comparison --------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    feature: str
    statistic: str
    value: float
    threshold: float
    records: int  # the window's records that carried this input

    @property
    def flagged(self) -> bool:
        return self.value > self.threshold


def _shares(counts: Array) -> Array:
    total = float(counts.sum())
    return counts / total if total > 0 else counts


def _number_scores(name: str, values: Array, ref: NumberReference) -> dict[str, float]:
    if not len(values):
        return {}
    shares = np.bincount(bin_index(np.asarray(ref.edges), values), minlength=len(ref.shares)) / len(values)
    return {WASSERSTEIN: normalised_wasserstein(values, ref), PSI: psi(ref.shares, shares)}


def scores(
    reference: Reference, window: Window, thresholds: Mapping[tuple[str, str], float] | None = None
) -> list[Score]:
    """Every statistic of every input, in schema order, with its threshold (defaults unless given)."""
    limits = default_thresholds() | dict(thresholds or {})
    out: list[Score] = []
    for spec in FIELDS:
        name = spec.name
        if isinstance(spec, CategoryField):
            counts = window.counts[name]
            records = int(counts.sum())
            ref = np.array([reference.categories[name][c] for c in spec.choices])
            found = {JENSEN_SHANNON: jensen_shannon(ref, counts), PSI: psi(ref, _shares(counts))} if records else {}
        else:
            values = window.numbers[name]
            records = len(values)
            found = _number_scores(name, values, reference.numbers[name])
        out.extend(Score(name, s, found[s], limits[(name, s)], records) for s in statistics(name) if s in found)
    return out


def flagged(found: Iterable[Score]) -> list[str]:
    """Inputs with any statistic over its threshold, in schema order, each named once."""
    names = {s.feature for s in found if s.flagged}
    return [f.name for f in FIELDS if f.name in names]
