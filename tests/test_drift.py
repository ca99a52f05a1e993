"""Drift statistics: scipy's figures, and the thresholds flag a real shift of one input only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from chargecast.model.artifact import Artifact
from chargecast.model.reference import Reference
from chargecast.monitor import drift
from chargecast.schema import FEATURES, FIELD_BY_NAME, FIELDS, CategoryField, NumberField
from chargecast.training.train import TrainResult

WINDOW = 5000
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def ref(model: Artifact) -> Reference:
    assert model.reference is not None
    return model.reference


def _draw(X: np.ndarray, seed: int) -> np.ndarray:
    """A window drawn like the training data: rows resampled from it."""
    rng = np.random.default_rng(seed)
    return X[rng.integers(0, len(X), WINDOW)].copy()


def _shift(X: np.ndarray, feature: str, seed: int) -> np.ndarray:
    """Shift one input by half its training sd; a category's first choice gains half its indicator's sd."""
    rng = np.random.default_rng(seed + 1000)
    j = FEATURES.index(feature)
    spec = FIELD_BY_NAME[feature]
    col = X[:, j]
    if isinstance(spec, CategoryField):
        p = float(np.mean(col == 0))
        target = p + 0.5 * math.sqrt(p * (1 - p))
        move = (col != 0) & (rng.random(len(col)) < (target - p) / (1 - p))
        col[move] = 0
    else:
        assert isinstance(spec, NumberField)
        shifted = col + 0.5 * float(np.std(col, ddof=1))
        if spec.integer:  # stochastic rounding keeps the mean shift exact and the values whole
            shifted = np.floor(shifted + rng.random(len(col)))
        X[:, j] = np.clip(shifted, spec.minimum, spec.maximum)
    return X


def test_wasserstein_is_scipys() -> None:
    rng = np.random.default_rng(7)
    u, v = rng.normal(size=300), rng.gamma(2.0, size=211)
    uw, vw = rng.random(300), rng.random(211)
    assert drift.wasserstein(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)
    assert drift.wasserstein(u, v, uw, vw) == pytest.approx(wasserstein_distance(u, v, uw, vw), rel=1e-12)
    ties = np.array([0.0, 0, 1, 1, 2, 5])
    assert drift.wasserstein(ties, ties[::-1] + 1) == pytest.approx(wasserstein_distance(ties, ties + 1))


def test_the_reference_grid_gives_scipys_figure_on_the_training_sample(ref: Reference, trained: TrainResult) -> None:
    for name, number in ref.numbers.items():
        values = _draw(trained.X_train, 5)[:, FEATURES.index(name)]
        grid = np.asarray(number.quantiles)
        expected = wasserstein_distance(values, grid, v_weights=drift.grid_weights(len(grid))) / number.sd
        assert drift.normalised_wasserstein(values, number) == pytest.approx(expected, rel=1e-10)
        # and the grid stands for the whole training column: within 0.01 sd of the exact figure
        exact = wasserstein_distance(values, trained.X_train[:, FEATURES.index(name)]) / number.sd
        assert abs(drift.normalised_wasserstein(values, number) - exact) < 0.01, name


def test_jensen_shannon_is_scipys_distance_in_base_2() -> None:
    for p, q in (([0.5, 0.5], [0.75, 0.25]), ([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]), ([1, 0], [0, 1])):
        assert drift.jensen_shannon(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), abs=1e-12)
    assert drift.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)  # the maximum in base 2
    assert drift.jensen_shannon([3, 1], [30, 10]) == 0.0  # counts or shares alike


def test_psi_floors_empty_bins() -> None:
    assert drift.psi([0.5, 0.5], [0.75, 0.25]) == pytest.approx(0.25 * math.log(1.5) - 0.25 * math.log(0.5))
    floored = drift.psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1])
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - drift.PSI_FLOOR) * math.log(0.1 / drift.PSI_FLOOR)
    assert floored == pytest.approx(expected)
    assert math.isfinite(floored)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_shift_flags_nothing(ref: Reference, trained: TrainResult, seed: int) -> None:
    found = drift.scores(ref, drift.window_from_encoded(_draw(trained.X_train, seed)))
    assert len(found) == 2 * len(FIELDS)
    assert drift.flagged(found) == [], [s for s in found if s.flagged]
    # the margin the defaults rely on: noise sits far below every threshold
    assert all(s.value < s.threshold / 2 for s in found), found


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("seed", SEEDS)
def test_shifting_one_input_flags_it_and_no_other(
    ref: Reference, trained: TrainResult, feature: str, seed: int
) -> None:
    window = _shift(_draw(trained.X_train, seed), feature, seed)
    found = drift.scores(ref, drift.window_from_encoded(window))
    assert drift.flagged(found) == [feature]
    primary = next(s for s in found if s.feature == feature and s.statistic == drift.statistics(feature)[0])
    assert primary.flagged, primary
    if isinstance(FIELD_BY_NAME[feature], NumberField):
        assert primary.value == pytest.approx(0.5, abs=0.08)  # a pure shift: W1 is the shift itself


def test_logged_inputs_make_the_same_window_as_encoded_rows(trained: TrainResult, ref: Reference) -> None:
    from chargecast.schema import decode

    X = _draw(trained.X_train, 9)[:500]
    records = [decode(row) for row in X.tolist()]
    records.append({"age": 40.0, "sex": "other", "bmi": 30.0, "children": 1.0, "smoker": "no", "region": "mars"})
    window = drift.window_from_inputs(records)
    assert window.rows == 501
    assert window.unknown == {"sex": 1, "region": 1}
    plain = drift.scores(ref, drift.window_from_encoded(X))
    logged = drift.scores(ref, window)
    for a, b in zip(plain, logged, strict=True):
        if FIELD_BY_NAME[a.feature].kind == "category":
            assert b.value == pytest.approx(a.value, abs=0.01)


def test_thresholds_override_the_primary_or_a_named_statistic(ref: Reference, trained: TrainResult) -> None:
    parsed = drift.parse_thresholds(["age=0.15", "region.psi=0.3", " "])
    assert parsed == {("age", "wasserstein"): 0.15, ("region", "psi"): 0.3}
    window = drift.window_from_encoded(_shift(_draw(trained.X_train, 1), "age", 1))
    assert drift.flagged(drift.scores(ref, window, {("age", "wasserstein"): 5.0, ("age", "psi"): 5.0})) == []
    assert drift.split_thresholds("age=0.15, bmi=0.2") == ["age=0.15", "bmi=0.2"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("height=0.1", "unknown feature 'height'"),
        ("age", "must be FEATURE=VALUE"),
        ("age=-1", "must be a finite number > 0"),
        ("age=nan", "must be a finite number > 0"),
        ("age=abc", "must be a finite number > 0"),
        ("sex.wasserstein=0.1", "sex has statistics jensen_shannon, psi"),
    ],
)
def test_bad_thresholds_are_named_with_their_rule(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        drift.parse_thresholds([item])
