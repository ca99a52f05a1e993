"""Compiled predictors: numpy-only, pickle-free, fast for one record and for millions.

Training fits scikit-learn models and compiles the winner into one of these; the serving
path never imports scikit-learn. Each predictor also gives exact Shapley contributions
(interventional, against the training data as background) that sum to prediction minus
``baseline``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from chargecast.model.features import Term, design, factor_column, factor_value, from_json, term_features, to_json
from chargecast.schema import FEATURES

Array = npt.NDArray[np.float64]
N_FEATURES = len(FEATURES)


class Predictor(Protocol):
    """What the artifact needs from a compiled model."""

    kind: str
    baseline: float

    def predict(self, X: Array) -> Array: ...
    def predict_row(self, row: Sequence[float]) -> float: ...
    def contributions(self, X: Array) -> Array: ...
    def to_json(self) -> dict[str, Any]: ...
    def arrays(self) -> dict[str, npt.NDArray[Any]]: ...


class LinearTerms:
    """``intercept + sum(coef * term(x))`` over the terms of :mod:`chargecast.model.features`."""

    kind = "linear"

    def __init__(
        self,
        terms: Sequence[Term],
        coef: Sequence[float],
        intercept: float,
        term_means: Sequence[float],
        part_means: Sequence[Sequence[float]],
    ) -> None:
        self.terms = list(terms)
        self.coef = np.asarray(coef, dtype=np.float64)
        if not len(self.terms) == len(self.coef) == len(term_means) == len(part_means):
            raise ValueError("linear model: terms, coefficients and background means differ in length")
        if not np.isfinite(self.coef).all() or not np.isfinite(intercept):
            raise ValueError("linear model: coefficients must be finite")
        self.intercept = float(intercept)
        # Background means: of each term, and of each term's per-input part (two-input terms).
        self.term_means = np.asarray(term_means, dtype=np.float64)
        self.part_means = [list(map(float, p)) for p in part_means]
        self.baseline = float(self.intercept + self.coef @ self.term_means)
        factors = sorted({f for t in self.terms for f in t})
        index = {f: i for i, f in enumerate(factors)}
        self._factors = factors
        self._plan = [(float(c), tuple(index[f] for f in t)) for c, t in zip(self.coef, self.terms, strict=True)]

    @classmethod
    def fit_background(
        cls, terms: Sequence[Term], coef: Sequence[float], intercept: float, background: Array
    ) -> LinearTerms:
        """Attach the background statistics that explanations need."""
        term_means = design(terms, background).mean(axis=0)
        part_means = []
        for term in terms:
            part_means.append([float(_part(term, col, background).mean()) for col in term_features(term)])
        return cls(terms, coef, intercept, term_means, part_means)

    def predict(self, X: Array) -> Array:
        # Summed term by term in the same order as predict_row: bit-identical results
        # whatever the batch size (a matrix product's rounding depends on the chunk).
        cache = {f: factor_column(f, X) for f in self._factors}
        total = np.full(len(X), self.intercept)
        for coef, term in zip(self.coef, self.terms, strict=True):
            value = np.full(len(X), float(coef))
            for f in term:
                value *= cache[f]
            total += value
        return total

    def predict_row(self, row: Sequence[float]) -> float:
        values = [factor_value(f, row) for f in self._factors]
        total = self.intercept
        for coef, idx in self._plan:
            term = coef
            for i in idx:
                term *= values[i]
            total += term
        return total

    def contributions(self, X: Array) -> Array:
        """Exact Shapley values; closed form because each term reads at most two inputs."""
        out = np.zeros((X.shape[0], N_FEATURES))
        for k, term in enumerate(self.terms):
            cols = term_features(term)
            c = self.coef[k]
            full = c * _part(term, None, X)
            if len(cols) == 1:
                out[:, cols[0]] += full - c * self.term_means[k]
                continue
            i, j = cols
            mu_i, mu_j = self.part_means[k]
            v0 = c * self.term_means[k]
            vi = c * _part(term, i, X) * mu_j
            vj = c * mu_i * _part(term, j, X)
            out[:, i] += 0.5 * ((vi - v0) + (full - vj))
            out[:, j] += 0.5 * ((vj - v0) + (full - vi))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "terms": to_json(self.terms),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "term_means": self.term_means.tolist(),
            "part_means": self.part_means,
        }

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {}

    @classmethod
    def from_json(cls, data: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> LinearTerms:
        return cls(from_json(data["terms"]), data["coef"], data["intercept"], data["term_means"], data["part_means"])


def _part(term: Term, col: int | None, X: Array) -> Array:
    """Product of a term's factors on input ``col`` (all factors when ``col`` is None)."""
    out = np.ones(X.shape[0])
    for f in term:
        if col is None or f[1] == col:
            out = out * factor_column(f, X)
    return out


class TreeGrid:
    """A tree ensemble compiled to a lookup table over the bins its split thresholds make.

    Trees split each input at finitely many thresholds, so the ensemble is constant on
    every cell of the grid those thresholds cut; one lookup replaces walking every tree.
    Inputs are rounded to float32 first, as scikit-learn's trees do, so cells match exactly.
    """

    kind = "grid"

    def __init__(self, edges: Sequence[Sequence[float]], values: Array, background: Array) -> None:
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self._edge_lists = [list(map(float, e)) for e in self.edges]
        shape = [len(e) + 1 for e in self.edges]
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        if self.values.size != math.prod(shape):
            raise ValueError(f"grid has {self.values.size} values, expected {math.prod(shape)}")
        self.strides = [int(s) for s in np.cumprod([1, *shape[:0:-1]])[::-1]]
        self._values_list = self.values.tolist()
        self.background = np.asarray(background, dtype=np.float64)
        self.baseline = float(self.predict(self.background).mean())

    def cells(self, X: Array) -> npt.NDArray[np.intp]:
        X32 = X.astype(np.float32).astype(np.float64)
        flat = np.zeros(X.shape[0], dtype=np.intp)
        for col, (e, s) in enumerate(zip(self.edges, self.strides, strict=True)):
            if len(e):
                flat += np.searchsorted(e, X32[:, col], side="left") * s
        return flat

    def predict(self, X: Array) -> Array:
        return self.values[self.cells(X)]

    def predict_row(self, row: Sequence[float]) -> float:
        flat = 0
        for x, e, s in zip(row, self._edge_lists, self.strides, strict=True):
            if e:
                flat += bisect_left(e, float(np.float32(x))) * s
        return float(self._values_list[flat])

    def contributions(self, X: Array, chunk: int = 256) -> Array:
        """Exact Shapley values by enumerating all input coalitions against the background."""
        out = np.zeros((X.shape[0], N_FEATURES))
        bg = self._bins(self.background)
        weights = [
            math.factorial(s) * math.factorial(N_FEATURES - s - 1) / math.factorial(N_FEATURES)
            for s in range(N_FEATURES)
        ]
        for start in range(0, X.shape[0], chunk):
            xb = self._bins(X[start : start + chunk])
            value = {}
            for size in range(N_FEATURES + 1):
                for subset in combinations(range(N_FEATURES), size):
                    mask = np.zeros(N_FEATURES, dtype=bool)
                    mask[list(subset)] = True
                    x_part = (xb[:, mask] * np.asarray(self.strides)[mask]).sum(axis=1)
                    b_part = (bg[:, ~mask] * np.asarray(self.strides)[~mask]).sum(axis=1)
                    value[subset] = self.values[x_part[:, None] + b_part[None, :]].mean(axis=1)
            for subset, v in value.items():
                for i in range(N_FEATURES):
                    if i not in subset:
                        with_i = tuple(sorted((*subset, i)))
                        out[start : start + chunk, i] += weights[len(subset)] * (value[with_i] - v)
        return out

    def _bins(self, X: Array) -> npt.NDArray[np.intp]:
        X32 = X.astype(np.float32).astype(np.float64)
        return np.column_stack([np.searchsorted(e, X32[:, c], side="left") for c, e in enumerate(self.edges)])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": [e.tolist() for e in self.edges]}

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"values": self.values, "background": self.background}

    @classmethod
    def from_json(cls, data: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> TreeGrid:
        return cls(data["edges"], arrays["values"], arrays["background"])


def from_spec(data: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> Predictor:
    """Rebuild a predictor from its JSON description and arrays."""
    kinds: dict[str, Any] = {"linear": LinearTerms, "grid": TreeGrid}
    if data.get("kind") not in kinds:
        raise ValueError(f"unknown predictor kind {data.get('kind')!r}")
    predictor: Predictor = kinds[data["kind"]].from_json(data, arrays)
    return predictor
