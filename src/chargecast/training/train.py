"""Honest model selection: hold out the test split first, pick by repeated K-fold CV.

The held-out rows are scored exactly once, after the choice is made and the winner is
refit on the whole training part. The predictive distribution is calibrated on the
refit's jackknife residuals (see :mod:`chargecast.training.calibration`), so no rows are spent
on a separate calibration split. One split is one draw: the chosen recipe is then refit,
with its interval and without choosing again, on random 80/20 splits of the whole file,
so the report can give every figure as mean ± sd beside the fixed split's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, RepeatedKFold, train_test_split

from chargecast.model import reference
from chargecast.model.features import design, domain_terms, drop_features, tutorial_terms
from chargecast.model.intervals import ResidualDistribution, assign_groups
from chargecast.model.predictors import LinearTerms, Predictor, TreeGrid
from chargecast.schema import FEATURES
from chargecast.training.calibration import central_offsets, fit_distribution
from chargecast.training.data import Dataset
from chargecast.training.scoring import interval_scores, mean_sd, point_scores

Array = npt.NDArray[np.float64]
MAX_GRID_CELLS = 8_000_000


class Candidate:
    """A model family: fit on encoded rows, predict, and compile for serving."""

    name: str
    description: str

    def fit(self, X: Array, y: Array, excluded: Sequence[int], seed: int) -> Any:
        raise NotImplementedError

    def predict(self, model: Any, X: Array) -> Array:
        raise NotImplementedError

    def compile(self, model: Any, X: Array) -> Predictor:
        raise NotImplementedError

    def jackknife_residuals(self, model: Any, X: Array, y: Array, excluded: Sequence[int], seed: int) -> Array:
        """Residuals of models fitted without the row itself, approximated by 20-fold CV.

        Calibration needs errors of models as close to the refit as possible; 5-fold
        models (80% of the rows) are visibly more spread, see :mod:`chargecast.training.calibration`.
        """
        out = np.empty(len(y))
        for a, b in KFold(n_splits=JACKKNIFE_FOLDS, shuffle=True, random_state=seed).split(X):
            out[b] = y[b] - self.predict(self.fit(X[a], y[a], excluded, seed), X[b])
        return out


JACKKNIFE_FOLDS = 20


@dataclass
class _FittedLinear:
    terms: list[Any]
    regression: LinearRegression


class LinearCandidate(Candidate):
    """Least squares on feature terms; the terms may be learned from the data (bin edges)."""

    def __init__(self, name: str, description: str, terms: Callable[[Array], list[Any]]) -> None:
        self.name, self.description, self._terms = name, description, terms

    def fit(self, X: Array, y: Array, excluded: Sequence[int], seed: int) -> _FittedLinear:
        terms = drop_features(self._terms(X), excluded)
        return _FittedLinear(terms, LinearRegression().fit(design(terms, X), y))

    def predict(self, model: _FittedLinear, X: Array) -> Array:
        out: Array = model.regression.predict(design(model.terms, X))
        return out

    def compile(self, model: _FittedLinear, X: Array) -> Predictor:
        reg = model.regression
        return LinearTerms.fit_background(model.terms, reg.coef_, float(reg.intercept_), X)

    def jackknife_residuals(
        self, model: _FittedLinear, X: Array, y: Array, excluded: Sequence[int], seed: int
    ) -> Array:
        """Exact leave-one-out residuals of least squares: e_i / (1 - h_ii), no refits."""
        D = np.column_stack([np.ones(len(X)), design(model.terms, X)])
        U, s, _ = np.linalg.svd(D, full_matrices=False)
        rank = int(np.sum(s > s[0] * max(D.shape) * np.finfo(np.float64).eps))
        leverage = np.sum(U[:, :rank] ** 2, axis=1)
        out: Array = (y - self.predict(model, X)) / np.maximum(1.0 - leverage, 1e-9)
        return out


class BoostingCandidate(Candidate):
    """Gradient-boosted shallow trees on the encoded inputs (categories as codes)."""

    name = "gradient_boosting"
    description = "gradient boosting, 300 trees of depth 2, learning rate 0.05, subsample 0.8"

    def fit(self, X: Array, y: Array, excluded: Sequence[int], seed: int) -> GradientBoostingRegressor:
        model = GradientBoostingRegressor(
            n_estimators=300, learning_rate=0.05, max_depth=2, subsample=0.8, random_state=seed
        )
        model.fit(_blank(X, excluded), y)
        model.excluded_ = list(excluded)
        return model

    def predict(self, model: GradientBoostingRegressor, X: Array) -> Array:
        out: Array = model.predict(_blank(X, model.excluded_))
        return out

    def compile(self, model: GradientBoostingRegressor, X: Array) -> Predictor:
        edges: list[list[float]] = [[] for _ in FEATURES]
        for tree in model.estimators_[:, 0]:
            t = tree.tree_
            for feat, thr in zip(t.feature, t.threshold, strict=True):
                if feat >= 0:
                    edges[feat].append(float(thr))
        edges = [sorted(set(e)) for e in edges]
        if math.prod(len(e) + 1 for e in edges) > MAX_GRID_CELLS:
            raise RuntimeError("tree ensemble too fine-grained to compile into a lookup grid")
        axes = [_representatives(e) for e in edges]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(FEATURES))
        # Explanations enumerate 64 coalitions per background row: an evenly spaced sample of
        # ~100 training rows keeps a 10,000-record explain request near a second.
        background = _blank(X, model.excluded_)[:: max(1, len(X) // 100)]
        grid = TreeGrid(edges, model.predict(mesh), background)
        return grid


def _blank(X: Array, excluded: Sequence[int]) -> Array:
    """Excluded inputs become a constant, so no tree can split on them."""
    if not excluded:
        return X
    out = X.copy()
    out[:, list(excluded)] = 0.0
    return out


def _representatives(edges: Sequence[float]) -> Array:
    """One float32-exact value inside each bin (lo, hi] that the thresholds cut."""
    if not edges:
        return np.zeros(1)
    reps = []
    for e in edges:
        x = np.float32(e)
        if float(x) > e:
            x = np.nextafter(x, np.float32(-np.inf))
        reps.append(float(x))
    top = np.float32(edges[-1])
    while float(top) <= edges[-1]:
        top = np.nextafter(top, np.float32(np.inf))
    reps.append(float(top))
    return np.asarray(reps)


CANDIDATES: tuple[Candidate, ...] = (
    LinearCandidate(
        "tutorial_baseline",
        "the tutorial's recipe: linear regression on degree-2 polynomial features plus binned age and bmi",
        tutorial_terms,
    ),
    LinearCandidate(
        "linear_domain",
        "linear regression with domain features: age², obesity (bmi >= 30), smoker × obesity, smoker × bmi",
        lambda X: domain_terms(),
    ),
    BoostingCandidate(),
)


@dataclass
class CVResult:
    """Out-of-fold results of one candidate over all repeats."""

    name: str
    description: str
    fold_scores: list[dict[str, float]]
    oof: Array  # (repeats, n) out-of-fold predictions
    coverage: float
    mean_width: float
    seconds: float

    def summary(self) -> dict[str, Any]:
        r2 = [s["r2"] for s in self.fold_scores]
        return {
            "model": self.name,
            "description": self.description,
            "r2_mean": float(np.mean(r2)),
            "r2_std": float(np.std(r2)),
            "mae_mean": float(np.mean([s["mae"] for s in self.fold_scores])),
            "rmse_mean": float(np.mean([s["rmse"] for s in self.fold_scores])),
            "coverage": self.coverage,
            "mean_interval_width": self.mean_width,
            "fit_seconds": self.seconds,
        }


@dataclass
class TrainConfig:
    seed: int = 42
    test_size: float = 0.2
    folds: int = 5
    repeats: int = 3
    level: float = 0.9
    exclude: tuple[str, ...] = ()
    splits: int = 20  # random 80/20 splits (seeds 1..splits) the chosen recipe is refit on; 0: none


@dataclass
class TrainResult:
    """Everything the artifact and the report need; holdout arrays are for plots only."""

    config: TrainConfig
    dataset: Dataset
    leaderboard: list[dict[str, Any]]
    chosen: str
    predictor: Predictor
    distribution: ResidualDistribution
    metrics: dict[str, dict[str, float]]
    X_test: Array
    y_test: Array
    pred_test: Array
    low_test: Array
    high_test: Array
    X_train: Array
    by_group: list[dict[str, Any]]
    constant_band: dict[str, float]
    exclusion: dict[str, Any] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, float]] = field(default_factory=list)  # see repeated_splits


def _splits(n: int, config: TrainConfig) -> Iterator[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.intp]]]:
    rkf = RepeatedKFold(n_splits=config.folds, n_repeats=config.repeats, random_state=config.seed)
    for k, (a, b) in enumerate(rkf.split(np.zeros(n))):
        yield k // config.folds, a, b


def cross_validate(
    candidate: Candidate,
    X: Array,
    y: Array,
    config: TrainConfig,
    excluded: Sequence[int],
    tick: Callable[[], None] = lambda: None,
) -> CVResult:
    """Repeated K-fold CV; interval coverage is measured honestly, fold by fold."""
    start = time.perf_counter()
    oof = np.zeros((config.repeats, len(y)))
    folds: list[tuple[int, npt.NDArray[np.intp]]] = []
    fold_scores = []
    for repeat, a, b in _splits(len(y), config):
        model = candidate.fit(X[a], y[a], excluded, config.seed)
        oof[repeat, b] = candidate.predict(model, X[b])
        fold_scores.append(point_scores(y[b], oof[repeat, b]))
        folds.append((repeat, b))
        tick()
    seconds = time.perf_counter() - start
    covered, widths = [], []
    names = [FEATURES[i] for i in excluded]
    for repeat, b in folds:
        # Fold models' errors calibrated on other fold models' errors: like with like.
        calib = np.ones(len(y), dtype=bool)
        calib[b] = False
        res = y - oof[repeat]
        groups, lo_off, hi_off = central_offsets(res[calib], X[calib], config.level, names)
        g = assign_groups(X[b], groups)
        lo, hi = np.maximum(oof[repeat, b] + lo_off[g], 0.0), oof[repeat, b] + hi_off[g]
        covered.append((y[b] >= lo) & (y[b] <= hi))
        widths.append(hi - lo)
    return CVResult(
        candidate.name,
        candidate.description,
        fold_scores,
        oof,
        float(np.concatenate(covered).mean()),
        float(np.concatenate(widths).mean()),
        seconds,
    )


def _interval_stats(y: Array, low: Array, high: Array) -> tuple[float, float]:
    return float(np.mean((y >= low) & (y <= high))), float(np.mean(high - low))


def train(
    dataset: Dataset,
    config: TrainConfig,
    progress: Callable[[int], Callable[[], None]] = lambda total: lambda: None,
) -> TrainResult:
    """Select, refit, calibrate and score once on the holdout."""
    start = time.perf_counter()
    unknown = [f for f in config.exclude if f not in FEATURES]
    if unknown:
        raise ValueError(f"--exclude: unknown feature {', '.join(unknown)}; choose from {', '.join(FEATURES)}")
    excluded = [FEATURES.index(f) for f in config.exclude]
    idx = np.arange(dataset.rows)
    train_idx, test_idx = train_test_split(idx, test_size=config.test_size, random_state=config.seed)
    X, y = dataset.X[train_idx], dataset.y[train_idx]
    X_test, y_test = dataset.X[test_idx], dataset.y[test_idx]

    fits = config.folds * config.repeats
    with_exclusion = "sex" not in config.exclude
    tick = progress(fits * (len(CANDIDATES) + int(with_exclusion)))
    results = [cross_validate(c, X, y, config, excluded, tick) for c in CANDIDATES]
    results.sort(key=lambda r: -r.summary()["r2_mean"])
    best = results[0]
    candidate = next(c for c in CANDIDATES if c.name == best.name)

    model, residuals, dist = _fit_with_interval(candidate, X, y, excluded, config, config.seed)
    predictor = candidate.compile(model, X)

    pred = predictor.predict(X_test)
    low, high = dist.apply(pred, X_test)
    coverage, width = _interval_stats(y_test, low, high)
    holdout = point_scores(y_test, pred) | {"coverage": coverage, "mean_interval_width": width}
    summary = best.summary()
    metrics = {
        "holdout": {k: holdout[k] for k in ("r2", "mae", "rmse", "coverage", "mean_interval_width", "total_bias")},
        "cv": {k: summary[k] for k in ("r2_mean", "r2_std", "mae_mean", "rmse_mean", "coverage")},
    }
    by_group = interval_by_group(dist, X_test, y_test, low, high)
    q = float(np.quantile(np.abs(residuals), config.level))
    constant = {
        "half_width": q,
        "mean_interval_width": float(np.mean(np.minimum(pred, q) + q)),
        "holdout_coverage": float(np.mean(np.abs(y_test - pred) <= q)),
    }

    exclusion = None
    if with_exclusion:
        ex = cross_validate(candidate, X, y, config, [*excluded, FEATURES.index("sex")], tick)
        ex_model = candidate.fit(X, y, [*excluded, FEATURES.index("sex")], config.seed)
        ex_hold = point_scores(y_test, candidate.predict(ex_model, X_test))
        exclusion = {
            "feature": "sex",
            "model": best.name,
            "cv": ex.summary(),
            "holdout": {k: ex_hold[k] for k in ("r2", "mae", "rmse")},
        }

    splits = repeated_splits(dataset, config, candidate, excluded)
    return TrainResult(
        config,
        dataset,
        [r.summary() for r in results],
        best.name,
        predictor,
        dist,
        metrics,
        X_test,
        y_test,
        pred,
        low,
        high,
        X,
        by_group,
        constant,
        exclusion,
        time.perf_counter() - start,
        {"reference_test_pred": candidate.predict(model, X_test)},
        splits,
    )


def _fit_with_interval(
    candidate: Candidate, X: Array, y: Array, excluded: Sequence[int], config: TrainConfig, seed: int
) -> tuple[Any, Array, ResidualDistribution]:
    """The recipe: fit, then the predictive distribution from the fit's jackknife residuals."""
    model = candidate.fit(X, y, excluded, seed)
    residuals = candidate.jackknife_residuals(model, X, y, excluded, seed)
    return model, residuals, fit_distribution(residuals, X, config.level, config.exclude)


SPLIT_FIGURES = ("r2", "mae", "total_bias", "coverage", "below", "above", "worst group", "winkler", "width")


def repeated_splits(
    dataset: Dataset, config: TrainConfig, candidate: Candidate, excluded: Sequence[int]
) -> list[dict[str, float]]:
    """The chosen recipe refit with its interval on random splits (seeds 1..config.splits) of the whole file.

    Nothing is chosen again: the model family, its features and the interval method are the
    ones selected on the fixed split, so these figures show how much one holdout's numbers
    move with the draw, not what a fresh selection would give (``make bench`` reruns that).
    Each split scores the refit as it would ship, with the fitted model's own predictions
    (a compiled predictor gives the same numbers).
    """
    out = []
    idx = np.arange(dataset.rows)
    alpha = 1.0 - config.level
    for seed in range(1, config.splits + 1):
        train_idx, test_idx = train_test_split(idx, test_size=config.test_size, random_state=seed)
        X, y = dataset.X[train_idx], dataset.y[train_idx]
        X_test, y_test = dataset.X[test_idx], dataset.y[test_idx]
        model, _, dist = _fit_with_interval(candidate, X, y, excluded, config, seed)
        pred = candidate.predict(model, X_test)
        low, high = dist.apply(pred, X_test)
        scored = point_scores(y_test, pred) | interval_scores(y_test, X_test, low, high, alpha)
        out.append({"seed": float(seed)} | {k: scored[k] for k in SPLIT_FIGURES})
    return out


def split_summary(result: TrainResult) -> dict[str, dict[str, float]]:
    """Each of :data:`SPLIT_FIGURES` as mean and sd over the random splits, and on the fixed split."""
    h = result.metrics["holdout"]
    fixed = {k: h[k] for k in ("r2", "mae", "total_bias")} | interval_scores(
        result.y_test, result.X_test, result.low_test, result.high_test, 1.0 - result.distribution.level
    )
    out = {}
    for key in SPLIT_FIGURES:
        mean, sd = mean_sd(s[key] for s in result.splits)
        out[key] = {"mean": mean, "sd": sd, "fixed": fixed[key]}
    return out


def interval_by_group(dist: ResidualDistribution, X: Array, y: Array, low: Array, high: Array) -> list[dict[str, Any]]:
    """Coverage, misses per tail and width of the interval in each calibration group."""
    groups = assign_groups(X, dist.groups)
    out = []
    for k, name in enumerate(dist.groups):
        m = groups == k
        rows = int(m.sum())
        lo_off, hi_off = dist.offsets(k, ((1 - dist.level) / 2, (1 + dist.level) / 2))
        out.append(
            {
                "group": name,
                "rows": rows,
                "coverage": _interval_stats(y[m], low[m], high[m])[0] if rows else math.nan,
                "below": float(np.mean(y[m] < low[m])) if rows else math.nan,
                "above": float(np.mean(y[m] > high[m])) if rows else math.nan,
                "mean_interval_width": float(np.mean(high[m] - low[m])) if rows else math.nan,
                "lo": lo_off,
                "hi": hi_off,
            }
        )
    return out


def training_ranges(X: Array) -> dict[str, Any]:
    """What the model has seen: numeric min/max and category counts."""
    from chargecast.schema import FIELDS, CategoryField

    out: dict[str, Any] = {}
    for j, spec in enumerate(FIELDS):
        col = X[:, j]
        if isinstance(spec, CategoryField):
            out[spec.name] = {c: int(np.sum(col == k)) for k, c in enumerate(spec.choices)}
        else:
            out[spec.name] = {"min": float(col.min()), "max": float(col.max())}
    return out


def metadata(result: TrainResult) -> dict[str, Any]:
    """The artifact's metadata.json content (the writer adds version, hashes, schema)."""
    c = result.config
    chosen = next(row for row in result.leaderboard if row["model"] == result.chosen)
    return {
        "model": result.chosen,
        "model_description": chosen["description"],
        "predictor": result.predictor.kind,
        "interval_level": c.level,
        "baseline": result.predictor.baseline,
        "excluded_features": list(c.exclude),
        "training": {
            "seed": c.seed,
            "test_size": c.test_size,
            "folds": c.folds,
            "repeats": c.repeats,
            "train_rows": len(result.X_train),
            "test_rows": len(result.y_test),
            "seconds": round(result.seconds, 3),
        },
        "data": {
            "sha256": result.dataset.sha256,
            "source": str(result.dataset.source),
            "rows": result.dataset.rows,
        },
        "training_ranges": training_ranges(result.X_train),
        "reference": reference.build(result.X_train),  # what drift monitoring compares against
        "metrics": result.metrics,
        "leaderboard": result.leaderboard,
        "interval": {
            "method": (
                "equal-tailed quantiles of jackknife residuals per group (Harrell-Davis), "
                "from the (1-L)/2 to the (1+L)/2 quantile"
            ),
            "meaning": (
                "at level L about (1-L)/2 of patients like this one are expected below the interval "
                "and (1-L)/2 above, overall and within each group: a share over many patients, not "
                "a guarantee for one, measured only inside the training ranges. The forecast is the "
                "mean (what to budget) and usually lies above the median"
            ),
            "calibration": (
                "leave-one-out residuals of the refit model (exact for least squares, 20-fold for trees); 5-fold "
                "out-of-fold residuals of the fold models are more spread than the refit's errors "
                "and made intervals about 4 points conservative"
            ),
            "groups": result.by_group,
            "constant_band": result.constant_band,
        },
        "exclusion": result.exclusion,
        "splits": {
            "seeds": [int(s["seed"]) for s in result.splits],
            "test_size": c.test_size,
            "recipe": f"{result.chosen} with its interval, refit on each split without choosing again",
            "figures": split_summary(result) if result.splits else {},
        },
    }
