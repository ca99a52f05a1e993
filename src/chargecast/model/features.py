"""Feature terms for the linear candidates, as plain data.

A term is a product of factors, each a function of one encoded input column. Keeping the
terms as JSON-able data (not code) lets the artifact store a linear model without pickle,
lets the serving path evaluate it without scikit-learn, and gives exact explanations
(each term touches at most two inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations_with_replacement, pairwise

import numpy as np
import numpy.typing as npt

from chargecast.schema import FEATURES, FIELD_BY_NAME, CategoryField

# A factor is ["num", col] (the value), ["eq", col, code] (1 if equal), ["ge", col, t]
# (1 if >= t) or ["bin", col, lo, hi] (1 if lo <= value < hi). A term is a list of factors.
Factor = tuple[str, int, float, float]
Term = tuple[Factor, ...]

AGE, SEX, BMI, CHILDREN, SMOKER, REGION = range(len(FEATURES))
OBESE_BMI = 30.0  # WHO threshold; the data's smoker charges jump there.


def num(col: int) -> Factor:
    return ("num", col, 0.0, 0.0)


def eq(col: int, code: float) -> Factor:
    return ("eq", col, float(code), 0.0)


def ge(col: int, threshold: float) -> Factor:
    return ("ge", col, float(threshold), 0.0)


def between(col: int, lo: float, hi: float) -> Factor:
    return ("bin", col, float(lo), float(hi))


def code(feature: str, value: str) -> int:
    spec = FIELD_BY_NAME[feature]
    assert isinstance(spec, CategoryField)
    return spec.choices.index(value)


def factor_column(f: Factor, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Evaluate one factor on every row of an encoded matrix."""
    kind, col, a, b = f
    x = np.asarray(X[:, col], dtype=np.float64)
    if kind == "num":
        return x
    if kind == "eq":
        return np.equal(x, a).astype(np.float64)
    if kind == "ge":
        return np.greater_equal(x, a).astype(np.float64)
    return (np.greater_equal(x, a) & np.less(x, b)).astype(np.float64)


def factor_value(f: Factor, row: Sequence[float]) -> float:
    """Evaluate one factor on one encoded row (the scalar hot path)."""
    kind, col, a, b = f
    x = row[col]
    if kind == "num":
        return x
    if kind == "eq":
        return 1.0 if x == a else 0.0
    if kind == "ge":
        return 1.0 if x >= a else 0.0
    return 1.0 if a <= x < b else 0.0


def design(terms: Sequence[Term], X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The (n, len(terms)) design matrix."""
    out = np.ones((X.shape[0], len(terms)), dtype=np.float64)
    cache: dict[Factor, npt.NDArray[np.float64]] = {}
    for k, term in enumerate(terms):
        for f in term:
            if f not in cache:
                cache[f] = factor_column(f, X)
            out[:, k] *= cache[f]
    return out


def term_features(term: Term) -> tuple[int, ...]:
    """The distinct input columns a term depends on (at most two by construction)."""
    return tuple(sorted({f[1] for f in term}))


def _categorical(feature: str, drop_first: bool = True) -> list[Factor]:
    spec = FIELD_BY_NAME[feature]
    assert isinstance(spec, CategoryField)
    col = FEATURES.index(feature)
    start = 1 if drop_first else 0
    return [eq(col, k) for k in range(start, len(spec.choices))]


def domain_terms() -> list[Term]:
    """Linear model with domain features: the smoking x obesity interaction drives charges."""
    smoker, obese = eq(SMOKER, code("smoker", "yes")), ge(BMI, OBESE_BMI)
    terms: list[Term] = [
        (num(AGE),),
        (num(AGE), num(AGE)),
        (eq(SEX, code("sex", "male")),),
        (num(BMI),),
        (num(CHILDREN),),
        (smoker,),
        (obese,),
        (smoker, obese),
        (smoker, num(BMI)),
    ]
    terms += [(f,) for f in _categorical("region")]
    return terms


def sturges_bins(values: npt.NDArray[np.float64]) -> int:
    """Sturges' rule, as PyCaret's numeric binning uses."""
    return math.ceil(math.log2(max(len(values), 2))) + 1


def quantile_edges(values: npt.NDArray[np.float64], bins: int) -> list[float]:
    """Inner bin edges at quantiles, deduplicated (ages repeat)."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({float(q) for q in qs})


def tutorial_terms(X: npt.NDArray[np.float64]) -> list[Term]:
    """The tutorial's recipe: degree-2 polynomial features plus binned age and bmi.

    Normalisation is left out on purpose: it does not change a least-squares fit's
    predictions (polynomials are closed under affine maps).
    """
    base: list[Factor] = [
        num(AGE),
        num(BMI),
        num(CHILDREN),
        eq(SEX, code("sex", "male")),
        eq(SMOKER, code("smoker", "yes")),
        *_categorical("region"),
    ]
    terms: list[Term] = [(f,) for f in base]
    for a, b in combinations_with_replacement(base, 2):
        binary = a[0] == "eq" and b[0] == "eq"
        if binary and (a == b or a[1] == b[1]):  # x*x == x; dummies of one category never co-occur
            continue
        terms.append((a, b))
    for col in (AGE, BMI):
        edges = quantile_edges(X[:, col], sturges_bins(X[:, col]))
        # One indicator per bin but the first (the intercept covers it); the last is open-ended.
        terms += [(between(col, lo, hi),) for lo, hi in pairwise(edges)]
        terms += [(ge(col, edges[-1]),)] if edges else []
    return terms


def drop_features(terms: Sequence[Term], excluded: Sequence[int]) -> list[Term]:
    """Remove every term that reads an excluded input."""
    return [t for t in terms if not set(term_features(t)) & set(excluded)]


def to_json(terms: Sequence[Term]) -> list[list[list[float | int | str]]]:
    return [[[f[0], f[1], f[2], f[3]] for f in term] for term in terms]


def from_json(data: Sequence[Sequence[Sequence[float | int | str]]]) -> list[Term]:
    terms: list[Term] = []
    for term in data:
        factors: list[Factor] = []
        for kind, col, a, b in term:
            if kind not in {"num", "eq", "ge", "bin"} or not 0 <= int(col) < len(FEATURES):
                raise ValueError(f"unknown factor {kind!r} on column {col!r}")
            factors.append((str(kind), int(col), float(a), float(b)))
        terms.append(tuple(factors))
    return terms
