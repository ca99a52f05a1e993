"""Training: honest selection, the required metrics, exclusion and the compiled predictors."""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from chargecast.model.features import design, domain_terms
from chargecast.model.predictors import LinearTerms, Predictor
from chargecast.schema import FEATURES, FIELDS, CategoryField, NumberField
from chargecast.training.data import Dataset
from chargecast.training.train import CANDIDATES, BoostingCandidate, TrainConfig, TrainResult, train


def random_rows(n: int, seed: int = 0) -> np.ndarray:
    """Valid encoded records over the schema's whole accepted range."""
    rng = np.random.default_rng(seed)
    cols = []
    for spec in FIELDS:
        if isinstance(spec, CategoryField):
            cols.append(rng.integers(0, len(spec.choices), n).astype(float))
        elif spec.integer:
            cols.append(rng.integers(int(spec.minimum), int(spec.maximum) + 1, n).astype(float))
        else:
            cols.append(np.round(rng.uniform(spec.minimum, spec.maximum, n), 3))
    return np.column_stack(cols)


def test_leaderboard_ranks_every_candidate_by_cv(trained: TrainResult) -> None:
    names = [row["model"] for row in trained.leaderboard]
    assert sorted(names) == sorted(c.name for c in CANDIDATES)
    r2 = [row["r2_mean"] for row in trained.leaderboard]
    assert r2 == sorted(r2, reverse=True)
    assert trained.chosen == names[0]


def test_metrics_have_the_documented_shape(trained: TrainResult) -> None:
    assert set(trained.metrics) == {"holdout", "cv"}
    assert set(trained.metrics["holdout"]) == {"r2", "mae", "rmse", "coverage", "mean_interval_width", "total_bias"}
    assert set(trained.metrics["cv"]) == {"r2_mean", "r2_std", "mae_mean", "rmse_mean", "coverage"}
    h = trained.metrics["holdout"]
    assert h["total_bias"] == pytest.approx((trained.pred_test.sum() - trained.y_test.sum()) / trained.y_test.sum())
    assert h["mae"] == pytest.approx(np.mean(np.abs(trained.pred_test - trained.y_test)))
    assert h["coverage"] == pytest.approx(
        np.mean((trained.y_test >= trained.low_test) & (trained.y_test <= trained.high_test))
    )


def test_holdout_is_the_requested_fraction(trained: TrainResult, dataset: Dataset) -> None:
    assert len(trained.y_test) == math.ceil(dataset.rows * 0.2)
    assert len(trained.X_train) + len(trained.y_test) == dataset.rows


def test_holdout_labels_never_influence_selection(dataset: Dataset, trained: TrainResult) -> None:
    """Scramble every holdout label: the leaderboard and the fitted model must not move."""
    idx = np.arange(dataset.rows)
    from sklearn.model_selection import train_test_split

    _, test_idx = train_test_split(idx, test_size=0.2, random_state=42)
    y = dataset.y.copy()
    y[test_idx] = np.random.default_rng(1).permutation(y[test_idx]) * 3
    scrambled = train(dataclasses.replace(dataset, y=y), dataclasses.replace(trained.config, splits=0))

    def timeless(board: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in row.items() if k != "fit_seconds"} for row in board]

    assert timeless(scrambled.leaderboard) == timeless(trained.leaderboard)
    np.testing.assert_array_equal(scrambled.pred_test, trained.pred_test)
    assert scrambled.metrics["holdout"] != trained.metrics["holdout"]


def test_cv_interval_coverage_is_near_the_level(trained: TrainResult) -> None:
    for row in trained.leaderboard:
        assert 0.85 <= row["coverage"] <= 0.95, row


def interval_score(y: np.ndarray, low: np.ndarray, high: np.ndarray, alpha: float = 0.1) -> float:
    """Winkler score: width plus 2/alpha times the distance outside; lower is better."""
    return float(np.mean(high - low + (2 / alpha) * (np.maximum(low - y, 0) + np.maximum(y - high, 0))))


def test_interval_beats_a_constant_band_by_the_interval_score(trained: TrainResult) -> None:
    """Width alone rewarded an interval that dropped the upper tail; the proper score does not."""
    y, pred, q = trained.y_test, trained.pred_test, trained.constant_band["half_width"]
    ours = interval_score(y, trained.low_test, trained.high_test)
    constant = interval_score(y, np.maximum(pred - q, 0), pred + q)
    assert ours < 0.9 * constant


def test_holdout_misses_fall_in_both_tails(trained: TrainResult) -> None:
    y = trained.y_test
    below, above = np.mean(y < trained.low_test), np.mean(y > trained.high_test)
    assert 0.015 <= below <= 0.09
    assert 0.015 <= above <= 0.09
    for row in trained.by_group:
        assert row["below"] + row["above"] == pytest.approx(1 - row["coverage"])


def test_excluding_sex_makes_predictions_blind_to_it(dataset: Dataset) -> None:
    result = train(dataset, TrainConfig(repeats=1, exclude=("sex",), splits=0))
    X = random_rows(200)
    flipped = X.copy()
    flipped[:, FEATURES.index("sex")] = 1 - flipped[:, FEATURES.index("sex")]
    np.testing.assert_allclose(result.predictor.predict(X), result.predictor.predict(flipped))
    assert np.all(result.predictor.contributions(X)[:, FEATURES.index("sex")] == 0)
    assert result.exclusion is None


def test_exclusion_cost_of_sex_is_reported(trained: TrainResult) -> None:
    assert trained.exclusion is not None
    assert trained.exclusion["feature"] == "sex"
    assert set(trained.exclusion["cv"]) >= {"r2_mean", "mae_mean"}


def test_unknown_excluded_feature_is_a_clear_error(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown feature smoking"):
        train(dataset, TrainConfig(exclude=("smoking",)))


def check_predictor(predictor: Predictor, reference: np.ndarray, X: np.ndarray) -> None:
    fast = predictor.predict(X)
    np.testing.assert_allclose(fast, reference, rtol=1e-9)
    rows = [predictor.predict_row(list(map(float, x))) for x in X[:300]]
    np.testing.assert_allclose(rows, reference[:300], rtol=1e-9)
    contrib = predictor.contributions(X[:50])
    np.testing.assert_allclose(contrib.sum(axis=1) + predictor.baseline, fast[:50], rtol=1e-9, atol=1e-6)


def test_compiled_boosting_grid_equals_sklearn(dataset: Dataset) -> None:
    candidate = BoostingCandidate()
    model = candidate.fit(dataset.X, dataset.y, [], seed=0)
    grid = candidate.compile(model, dataset.X)
    X = np.vstack([random_rows(3000), dataset.X])
    # values sitting exactly on split thresholds must fall on the same side as in sklearn
    thresholds = np.concatenate([e for e in grid.edges if len(e)])  # type: ignore[attr-defined]
    on_edge = np.repeat(dataset.X[:1], len(grid.edges[2]), axis=0)  # type: ignore[attr-defined]
    on_edge[:, 2] = grid.edges[2]  # type: ignore[attr-defined]
    X = np.vstack([X, on_edge])
    assert len(thresholds) > 10
    check_predictor(grid, model.predict(X), X)


def test_compiled_linear_terms_equal_sklearn(dataset: Dataset) -> None:
    terms = domain_terms()
    reg = LinearRegression().fit(design(terms, dataset.X), dataset.y)
    predictor = LinearTerms.fit_background(terms, reg.coef_, float(reg.intercept_), dataset.X)
    X = random_rows(2000)
    check_predictor(predictor, reg.predict(design(terms, X)), X)


def test_linear_contributions_are_exact_shapley_values(dataset: Dataset) -> None:
    """The closed form equals brute-force interventional Shapley over all coalitions."""
    terms = domain_terms()
    reg = LinearRegression().fit(design(terms, dataset.X), dataset.y)
    background = dataset.X[:200]
    predictor = LinearTerms.fit_background(terms, reg.coef_, float(reg.intercept_), background)
    x = random_rows(3, seed=5)
    d = len(FEATURES)

    def value(row: np.ndarray, subset: tuple[int, ...]) -> float:
        mixed = background.copy()
        mixed[:, list(subset)] = row[list(subset)]
        return float(predictor.predict(mixed).mean())

    for row, got in zip(x, predictor.contributions(x), strict=True):
        phi = np.zeros(d)
        for i in range(d):
            others = [j for j in range(d) if j != i]
            for size in range(d):
                for s in combinations(others, size):
                    w = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
                    phi[i] += w * (value(row, tuple(sorted((*s, i)))) - value(row, s))
        np.testing.assert_allclose(got, phi, rtol=1e-7, atol=1e-6)


def test_predictions_stay_sane_over_the_whole_accepted_range(trained: TrainResult) -> None:
    """The tutorial's pickle predicted 5.5e15 out of range; ours must stay plausible."""
    X = random_rows(20000, seed=3)
    pred = trained.predictor.predict(X)
    assert np.all(np.isfinite(pred))
    assert pred.max() < 10 * trained.y_test.max()
    ages = [s for s in FIELDS if isinstance(s, NumberField) and s.name == "age"]
    assert ages[0].maximum == 100


def test_linear_jackknife_residuals_equal_refits_without_the_row(dataset: Dataset) -> None:
    """The closed form e_i / (1 - h_ii) is what leaving row i out and refitting gives."""
    linear = next(c for c in CANDIDATES if c.name == "linear_domain")
    X, y = dataset.X[:300], dataset.y[:300]
    model = linear.fit(X, y, [], 0)
    fast = linear.jackknife_residuals(model, X, y, [], 0)
    for i in (0, 17, 123, 299):
        keep = np.arange(len(y)) != i
        refit = linear.fit(X[keep], y[keep], [], 0)
        assert fast[i] == pytest.approx(y[i] - linear.predict(refit, X[i : i + 1])[0], rel=1e-6)


def test_other_models_calibrate_on_many_fold_residuals(dataset: Dataset) -> None:
    """Every row gets a residual from a model that never saw it (20-fold for non-linear models)."""
    boosting = BoostingCandidate()
    X, y = dataset.X[:400], dataset.y[:400]
    model = boosting.fit(X, y, [], 0)
    res = boosting.jackknife_residuals(model, X, y, [], 0)
    in_sample = y - boosting.predict(model, X)
    assert np.all(np.isfinite(res))
    assert np.mean(np.abs(res)) > np.mean(np.abs(in_sample))  # honest: worse than in-sample
