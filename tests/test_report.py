"""The report and model card: every file renders, the text carries the run's own numbers, and the plots are legible.

Everything runs on the real shared data through the suite's ``trained`` fixture (seed 42,
default config); expected numbers are recomputed here from the TrainResult's arrays, not
copied from the report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.text import Text
from scipy.stats import binomtest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from chargecast.model.features import design, domain_terms
from chargecast.model.intervals import assign_groups, group_names
from chargecast.schema import FEATURES
from chargecast.training.data import Dataset
from chargecast.training.report import LEVELS, PLOTS, _grouping, figures, render, wilson, wilson_bars
from chargecast.training.train import CANDIDATES, TrainResult

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA: dict[str, Any] = {
    "version": "20260101-0123abcd",
    "created_at": "2026-01-01T00:00:00+00:00",
    "data": {"sha256": "0" * 64, "source": "insurance.csv", "rows": 1338},
    "libraries": {"python": "3.11", "numpy": "2.0"},
}
OLD_EXPLANATION = ("narrowest", "stretched", "Mondrian", "split-conformal", "window lo")


@pytest.fixture(scope="module")
def rendered(trained: TrainResult) -> dict[str, bytes]:
    return render(trained, METADATA)


@pytest.fixture(scope="module")
def report(rendered: dict[str, bytes]) -> str:
    return rendered["report.md"].decode()


@pytest.fixture(scope="module")
def card(rendered: dict[str, bytes]) -> str:
    return rendered["model_card.md"].decode()


@pytest.fixture
def drawn(trained: TrainResult) -> Iterator[dict[str, Figure]]:
    """Every plot's open figure, drawn so tick labels exist; closed afterwards."""
    import matplotlib.pyplot as plt

    out: dict[str, Figure] = {}
    for name, fig in figures(trained):
        fig.canvas.draw()  # closing later unregisters the figure; its drawn artists stay readable
        out[name] = fig
    yield out
    plt.close("all")


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _usd(x: float) -> str:
    return f"-${-x:,.0f}" if round(x) < 0 else f"${x:,.0f}"


def _signed_usd(x: float) -> str:
    return _usd(x) if round(x) < 0 else "+" + _usd(x)


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def _scipy_wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _png_size(content: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, which must come first."""
    assert content[:8] == PNG_SIGNATURE
    assert content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    return width, height


# -- files and plots ----------------------------------------------------------------------


def test_render_produces_every_file(rendered: dict[str, bytes]) -> None:
    assert set(rendered) == {"report.md", "model_card.md", *PLOTS.values()}
    assert all(name.startswith("plots/") and name.endswith(".png") for name in PLOTS.values())
    assert all(rendered[name].startswith(PNG_SIGNATURE) for name in PLOTS.values())


def test_report_links_every_plot(report: str) -> None:
    links = _section(report, "Plots")
    assert all(f"]({path})" in links for path in PLOTS.values())


@pytest.mark.parametrize("name", sorted(PLOTS.values()))
def test_plots_are_wide_and_not_blank(rendered: dict[str, bytes], name: str) -> None:
    import io

    import matplotlib.image

    width, height = _png_size(rendered[name])
    assert width >= 1200
    assert height >= 500
    image = np.asarray(matplotlib.image.imread(io.BytesIO(rendered[name]), format="png"))
    assert image.shape[:2] == (height, width)
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
    assert len(colours) > 20, "the plot is (nearly) blank"


def test_plot_text_is_at_least_11_pt(drawn: dict[str, Figure]) -> None:
    assert set(drawn) == set(PLOTS)
    for name, fig in drawn.items():
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert len(texts) > 5, name
        small = [(t.get_text(), t.get_fontsize()) for t in texts if float(t.get_fontsize()) < 11]
        assert not small, f"{name}: {small}"


def test_money_axes_show_dollars_with_thousands_separators(drawn: dict[str, Figure]) -> None:
    money_axes = 0
    for name, fig in drawn.items():
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                if "(USD)" not in axis.get_label_text():
                    continue
                money_axes += 1
                labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
                assert labels, name
                assert all(label.lstrip("-").startswith("$") for label in labels), (name, labels)
                assert any("," in label for label in labels), (name, labels)  # ticks reach $1,000
    assert money_axes >= 6  # both axes of two scatter plots, the width and contribution axes


def test_predicted_vs_actual_draws_every_holdout_interval(trained: TrainResult, drawn: dict[str, Figure]) -> None:
    (ax,) = drawn["predicted_vs_actual"].axes
    segments = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    drawn_bars = sorted((s[0, 0], min(s[:, 1]), max(s[:, 1])) for s in segments)
    expected = sorted(zip(trained.pred_test, trained.low_test, trained.high_test, strict=True))
    assert len(drawn_bars) == len(trained.y_test)
    np.testing.assert_allclose(drawn_bars, expected)
    y, low, high = trained.y_test, trained.low_test, trained.high_test
    counts = {"inside": int(np.sum((y >= low) & (y <= high))), "below": int(np.sum(y < low))}
    counts["above"] = int(np.sum(y > high))
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    for where, count in counts.items():
        assert any(text.startswith(f"actual {where} its interval: {count} (") for text in legend), legend


def test_coverage_by_level_plot_recomputes_the_distribution(trained: TrainResult, drawn: dict[str, Figure]) -> None:
    ax_cov, ax_tail = drawn["coverage_by_level"].axes
    lines = {line.get_label(): line for line in ax_cov.get_lines()}
    y = trained.y_test
    expected = []
    for level in LEVELS:
        low, high = trained.distribution.apply(trained.pred_test, trained.X_test, float(level))
        expected.append(np.mean((y >= low) & (y <= high)))

    def data(label: str) -> tuple[np.ndarray, np.ndarray]:
        x, ys = lines[label].get_data()
        return np.asarray(x, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    np.testing.assert_allclose(data("holdout coverage")[0], LEVELS)
    np.testing.assert_allclose(data("holdout coverage")[1], np.asarray(expected))
    np.testing.assert_allclose(*data("coverage = level"))
    assert LEVELS[0] == 0.5
    assert LEVELS[-1] == 0.99
    labels = {line.get_label() for line in ax_tail.get_lines()}
    assert {"below the interval", "above the interval"} <= labels


def test_wilson_matches_scipy() -> None:
    cases = [(0, 24), (2, 24), (12, 30), (246, 268), (268, 268), (1, 1)]
    low, high = wilson([k for k, _ in cases], [n for _, n in cases])
    for (k, n), lo, hi in zip(cases, low, high, strict=True):
        assert (lo, hi) == pytest.approx(_scipy_wilson(k, n), abs=1e-12), (k, n)
    empty_low, empty_high = wilson(0, 0)
    assert math.isnan(float(empty_low))
    assert math.isnan(float(empty_high))


def test_wilson_bars_reach_the_wilson_interval_of_known_counts() -> None:
    cases = [(22, 24), (0, 24), (30, 30), (246, 268), (1, 3)]
    bars = wilson_bars([k / n for k, n in cases], [n for _, n in cases])
    for (k, n), below, above in zip(cases, bars[0], bars[1], strict=True):
        lo, hi = _scipy_wilson(k, n)
        assert (below, above) == pytest.approx((k / n - lo, hi - k / n), abs=1e-12), (k, n)
    assert wilson_bars([math.nan], [0]).tolist() == [[0.0], [0.0]]  # an empty group: no bar


def test_coverage_plot_draws_each_groups_wilson_interval(trained: TrainResult, drawn: dict[str, Figure]) -> None:
    """Counts recomputed from the holdout arrays; the drawn bars must span scipy's Wilson intervals."""
    y, low, high = trained.y_test, trained.low_test, trained.high_test
    inside = (y >= low) & (y <= high)
    groups = assign_groups(trained.X_test, trained.distribution.groups)
    counts = [
        (int(inside[groups == k].sum()), int(np.sum(groups == k))) for k in range(len(trained.distribution.groups))
    ]
    counts.append((int(inside.sum()), len(y)))  # the "all holdout" row
    ax_cov = drawn["interval_coverage"].axes[0]
    segments = [seg for c in ax_cov.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    drawn_spans = sorted((float(seg[:, 0].min()), float(seg[:, 0].max())) for seg in segments)
    assert len(drawn_spans) == len(counts)
    np.testing.assert_allclose(drawn_spans, sorted(_scipy_wilson(k, n) for k, n in counts), atol=1e-9)


# -- the interval text --------------------------------------------------------------------


def test_group_tables_carry_the_run_numbers(trained: TrainResult, report: str, card: str) -> None:
    tail = (1 - trained.distribution.level) / 2
    for text in (_section(report, "Prediction intervals"), _section(card, "Intervals")):
        assert f"below (expect {tail:.1%})" in text
        for g in trained.by_group:
            n = int(g["rows"])
            k = round(g["coverage"] * n)
            lo, hi = _scipy_wilson(k, n)
            cells = _row(text, g["group"])
            assert cells[1:8] == [
                str(n),
                _pct(g["coverage"]),
                f"{lo:.1%}–{hi:.1%}",
                _pct(g["below"]),
                _pct(g["above"]),
                _usd(g["mean_interval_width"]),
                f"{_signed_usd(g['lo'])} to {_signed_usd(g['hi'])}",
            ]
        y, low, high = trained.y_test, trained.low_test, trained.high_test
        overall = _row(text, "**all holdout**")
        assert overall[1:3] == [str(len(y)), _pct(trained.metrics["holdout"]["coverage"])]
        assert overall[4:6] == [_pct(float(np.mean(y < low))), _pct(float(np.mean(y > high)))]


def test_group_rows_cover_the_holdout(trained: TrainResult) -> None:
    """The per-group table is only meaningful if its groups partition the holdout."""
    assert sum(int(g["rows"]) for g in trained.by_group) == len(trained.y_test)
    for g in trained.by_group:
        assert g["coverage"] + g["below"] + g["above"] == pytest.approx(1.0)


def test_level_table_recomputes_each_level(trained: TrainResult, report: str) -> None:
    section = _section(report, "Prediction intervals").split("### Across levels", 1)[1]
    y = trained.y_test
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        low, high = trained.distribution.apply(trained.pred_test, trained.X_test, level)
        inside = (y >= low) & (y <= high)
        cells = _row(section, f"{level:.0%}")
        assert cells[1] == _pct(float(inside.mean()))
        assert cells[3:7] == [
            _pct(float(np.mean(y < low))),
            _pct(float(np.mean(y > high))),
            f"{(1 - level) / 2:.1%}",
            _usd(float(np.mean(high - low))),
        ]


def test_interval_text_explains_the_new_interval_only(trained: TrainResult, report: str, card: str) -> None:
    pred, X, y = trained.pred_test, trained.X_test, trained.y_test
    median = trained.distribution.quantiles(pred, X, [0.5])[:, 0]
    above_median = float(np.mean(pred > median))
    non_smoker = X[:, FEATURES.index("smoker")] == 0
    extra = (y - pred)[non_smoker]
    large = extra[extra > 5000]
    age = trained.X_train[:, FEATURES.index("age")]
    for text in (_section(report, "Prediction intervals"), _section(card, "Intervals")):
        for phrase in OLD_EXPLANATION:
            assert phrase not in text
        assert "**equal-tailed**" in text
        assert "Not a guarantee for one patient" in text
        assert all(f"`{g}`" in text for g in trained.distribution.groups)
        assert "jackknife (leave-one-out) residuals" in text
        assert "5-fold out-of-fold residuals" in text
        assert "*Random splits*" in text  # where the figures over many splits are, in the same file
        assert f"age {age.min():.0f} to {age.max():.0f}" in text
        where = "for every holdout patient" if above_median == 1.0 else f"for {_pct(above_median)} of holdout patients"
        assert f"{where}, by a median {_usd(float(np.median(pred - median)))}" in text
        assert f"{len(large)} of {len(extra)} holdout non-smokers" in text
        assert f"{_usd(float(large.mean()))} above on average" in text
        if trained.predictor.kind == "linear":
            assert "exact for this least-squares model" in text
    for phrase in OLD_EXPLANATION:
        assert phrase not in report
        assert phrase not in card


@pytest.mark.parametrize("excluded", [(), ("smoker",), ("bmi",), ("age",), ("age", "bmi"), ("smoker", "age")])
def test_grouping_text_follows_the_groups_an_exclusion_leaves(excluded: tuple[str, ...]) -> None:
    groups = group_names(excluded)
    text = _grouping(groups)
    assert ("age band" in text) == any("age " in g for g in groups)
    assert ("obesity" in text) == any("bmi" in g for g in groups)
    assert ("all patients form one group" in text) == (groups == ["all"])


def test_constant_band_comparison_recomputes_its_misses(trained: TrainResult, report: str) -> None:
    pred, y = trained.pred_test, trained.y_test
    q = trained.constant_band["half_width"]
    low, high = np.maximum(pred - q, 0.0), pred + q
    assert trained.constant_band["mean_interval_width"] == pytest.approx(float(np.mean(high - low)))
    alpha = 1 - trained.distribution.level

    def winkler(lo: np.ndarray, hi: np.ndarray) -> float:
        return float(np.mean(hi - lo + 2 / alpha * (np.maximum(lo - y, 0) + np.maximum(y - hi, 0))))

    text = _section(report, "Prediction intervals").split("### Against a constant band", 1)[1]
    ours, theirs = trained.metrics["holdout"]["mean_interval_width"], trained.constant_band["mean_interval_width"]
    versus = f"{1 - ours / theirs:.1%} narrower" if ours <= theirs else f"{ours / theirs:.1f}× as wide"
    assert f"ours is {versus} ({_usd(ours)})" in text
    assert (
        f"the constant band's are {_pct(float(np.mean(y < low)))} below and {_pct(float(np.mean(y > high)))} above"
        in text
    )
    ours_w = winkler(trained.low_test, trained.high_test)
    assert f"ours {_usd(ours_w)}, the constant band {_usd(winkler(low, high))}" in text


def test_holdout_table_splits_misses_by_side(trained: TrainResult, report: str) -> None:
    y, low, high = trained.y_test, trained.low_test, trained.high_test
    h = trained.metrics["holdout"]
    cells = _row(_section(report, "Holdout"), "interval coverage")
    below, above = _pct(float(np.mean(y < low))), _pct(float(np.mean(y > high)))
    assert cells[1] == f"{_pct(h['coverage'])} (nominal 90%; {below} below, {above} above)"


# -- figures over random splits -----------------------------------------------------------

SPLIT_ROWS = (
    "R²",
    "MAE",
    "total bias (sum of forecasts vs charges)",
    "interval coverage at 90%",
    "share below the interval",
    "share above the interval",
    "coverage in the worst of 7 groups",
    "Winkler score, α = 0.1",
    "mean interval width",
)


def _number(text: str) -> float:
    """A report cell's number: "$1,234", "+1.2%", "91.6%" or "0.876"."""
    plain = text.replace("$", "").replace(",", "").replace("+", "")
    return float(plain[:-1]) / 100 if plain.endswith("%") else float(plain)


def _mean_sd(cell: str) -> tuple[float, float]:
    mean, sd = cell.split(" ± ")
    return _number(mean), _number(sd)


def test_random_splits_table_has_every_figure_as_mean_and_sd(
    dataset: Dataset, trained: TrainResult, report: str, card: str
) -> None:
    """On the real data file: R² and MAE per split recomputed with scikit-learn alone (the chosen
    recipe, no selection), the interval figures plausible, the fixed split beside them."""
    assert trained.chosen == "linear_domain"  # the recipe recomputed below
    r2, mae = [], []
    for seed in range(1, 21):
        a, b = train_test_split(np.arange(dataset.rows), test_size=0.2, random_state=seed)
        fit = LinearRegression().fit(design(domain_terms(), dataset.X[a]), dataset.y[a])
        pred = fit.predict(design(domain_terms(), dataset.X[b]))
        r2.append(r2_score(dataset.y[b], pred))
        mae.append(mean_absolute_error(dataset.y[b], pred))
    h = trained.metrics["holdout"]
    for text in (_section(report, "Random splits"), _section(card, "Random splits")):
        assert "20 random 80/20 splits (seeds 1–20)" in text
        assert "**Nothing is chosen again**" in text
        rows = {label: _row(text, label) for label in SPLIT_ROWS}
        assert rows["R²"][1:] == [f"{np.mean(r2):.3f} ± {np.std(r2, ddof=1):.3f}", f"{h['r2']:.3f}"]
        assert rows["MAE"][1:] == [f"{_usd(np.mean(mae))} ± {_usd(np.std(mae, ddof=1))}", _usd(h["mae"])]
        cov, cov_sd = _mean_sd(rows["interval coverage at 90%"][1])
        assert 0.8 <= cov <= 1.0
        assert cov_sd > 0
        assert rows["interval coverage at 90%"][2] == _pct(h["coverage"])
        for tail in ("share below the interval", "share above the interval"):
            share, sd = _mean_sd(rows[tail][1])
            assert 0.02 <= share <= 0.08, tail
            assert sd > 0, tail
        worst, worst_sd = _mean_sd(rows["coverage in the worst of 7 groups"][1])
        assert 0.7 <= worst <= cov
        assert worst_sd > 0
        width, width_sd = _mean_sd(rows["mean interval width"][1])
        score, score_sd = _mean_sd(rows["Winkler score, α = 0.1"][1])
        assert 0 < width_sd < width < score  # the score is the width plus penalties for misses
        assert score_sd > 0
        assert _number(rows["mean interval width"][2]) == pytest.approx(h["mean_interval_width"], abs=0.5)
        bias, bias_sd = _mean_sd(rows["total bias (sum of forecasts vs charges)"][1])
        assert abs(bias) < 0.05
        assert bias_sd > 0


def test_no_random_splits_is_said_not_hidden(trained: TrainResult) -> None:
    files = render(dataclasses.replace(trained, splits=[]), METADATA)
    for name in ("report.md", "model_card.md"):
        assert "No random splits were run" in _section(files[name].decode(), "Random splits")


# -- the rest of the report ---------------------------------------------------------------


def test_report_names_chosen_model_and_holdout_r2(trained: TrainResult, report: str) -> None:
    assert report.startswith(f"# chargecast training report: model {METADATA['version']}")
    assert f"`{trained.chosen}`" in report
    assert _row(_section(report, "Holdout"), "R²")[1] == f"{trained.metrics['holdout']['r2']:.3f}"
    assert _row(_section(report, "Holdout"), "MAE")[1] == _usd(trained.metrics["holdout"]["mae"])


def test_leaderboard_has_one_row_per_candidate(trained: TrainResult, report: str) -> None:
    lines = _section(report, "Model selection").splitlines()
    rows = [line for line in lines if line.startswith("| ")][2:]  # skip header and rule
    assert len(rows) == len(trained.leaderboard) == len(CANDIDATES)
    for entry, line in zip(trained.leaderboard, rows, strict=True):
        assert f"`{entry['model']}`" in line
        assert ("(chosen)" in line) == (entry["model"] == trained.chosen)


def test_model_card_states_the_training_ranges(insurance_csv: Path, trained: TrainResult, card: str) -> None:
    """Recompute the training split from the raw CSV, independently of the training code."""
    frame = pd.read_csv(insurance_csv)
    train_idx, _ = train_test_split(np.arange(len(frame)), test_size=0.2, random_state=trained.config.seed)
    part = frame.iloc[train_idx]
    assert f"| age | {part['age'].min()} | {part['age'].max()} | 18 to 100 |" in card
    assert f"| bmi | {part['bmi'].min():.2f} | {part['bmi'].max():.2f} |" in card
    smokers = int((part["smoker"] == "yes").sum())
    assert f"| smoker | no {len(part) - smokers}, yes {smokers} |" in card
    assert METADATA["version"] in card
    assert METADATA["data"]["sha256"] in card


def test_exclusion_section_only_when_exclusion_is_set(trained: TrainResult, report: str) -> None:
    assert trained.exclusion is not None  # sex is not excluded by default, so its cost is measured
    assert "## Cost of excluding `sex`" in report
    ex_r2 = trained.exclusion["holdout"]["r2"]
    assert f"{ex_r2:.3f}" in _section(report, "Cost of excluding")
    without = render(dataclasses.replace(trained, exclusion=None), METADATA)["report.md"].decode()
    assert "Cost of excluding" not in without


def test_pycaret_comparison_flags_a_different_split(trained: TrainResult, report: str) -> None:
    assert "not comparable" not in report
    other = dataclasses.replace(trained, config=dataclasses.replace(trained.config, seed=7))
    other_report = render(other, METADATA)["report.md"].decode()
    assert "0.876" in other_report
    assert "not comparable" in other_report


def test_render_is_deterministic(trained: TrainResult, rendered: dict[str, bytes]) -> None:
    assert render(trained, METADATA) == rendered


def test_missing_metadata_is_tolerated(trained: TrainResult) -> None:
    files = render(trained, {})
    report, card = files["report.md"].decode(), files["model_card.md"].decode()
    assert "(not recorded)" in report
    assert trained.dataset.sha256 in card  # falls back to the dataset's own provenance


def test_a_group_without_holdout_rows_renders(trained: TrainResult) -> None:
    """Small groups can be empty on the holdout; their NaN shares must not break the report."""
    nan = math.nan
    empty = [dict(g, rows=0, coverage=nan, below=nan, above=nan, mean_interval_width=nan) for g in trained.by_group]
    files = render(dataclasses.replace(trained, by_group=empty), METADATA)
    cells = _row(_section(files["report.md"].decode(), "Prediction intervals"), trained.by_group[0]["group"])
    assert cells[1:7] == ["0", "–", "–", "–", "–", "–"]
    assert _png_size(files[PLOTS["interval_coverage"]])[0] >= 1200


def test_importing_the_module_stays_cheap() -> None:
    heavy = "{'matplotlib', 'sklearn', 'pandas', 'scipy'}"
    code = f"import sys, chargecast.training.report; print(sorted({heavy} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
