"""The training report and model card, rendered to bytes for the artifact directory.

Reviewers (engineers, actuaries) need the numbers a run produced next to the caveats that
qualify them, in files that travel with the model. The fitted numbers come from the
:class:`~chargecast.training.train.TrainResult`, the random splits' figures included; what is
computed here only re-reads its holdout (tail shares, Wilson intervals, coverage across
levels, the constant band's misses), training ranges and the contribution summary. matplotlib is imported inside
:func:`render`, so importing this module costs nothing on the serving path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from chargecast.model.intervals import MIN_GROUP, assign_groups
from chargecast.schema import FEATURES, FIELDS, CategoryField, NumberField
from chargecast.training.scoring import GROUPS, winkler

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from chargecast.training.train import TrainResult

Array = npt.NDArray[np.float64]

PLOTS: dict[str, str] = {
    "predicted_vs_actual": "plots/predicted_vs_actual.png",
    "residuals": "plots/residuals.png",
    "interval_coverage": "plots/interval_coverage.png",
    "coverage_by_level": "plots/coverage_by_level.png",
    "contributions": "plots/contributions.png",
}
# Fixed colours per interval group (one per group, so no two share), so every plot reads the same way.
GROUP_COLOURS = ("#4c72b0", "#55a868", "#8172b3", "#dd8452", "#c44e52")
# Where the actual charge fell against its interval: inside, below, above.
INSIDE, BELOW, ABOVE = "#7f8c9d", "#e08a1e", "#c0392b"
# Figures are saved at figsize × DPI pixels (no tight bbox), so every PNG is at least 1,200 px
# wide and a 12 pt label stays legible when the image is shown at its own size.
DPI = 100
SIZES: dict[str, tuple[float, float]] = {
    "predicted_vs_actual": (13.0, 8.5),
    "residuals": (13.0, 6.5),
    "interval_coverage": (16.0, 6.5),
    "coverage_by_level": (15.0, 6.5),
    "contributions": (12.5, 5.5),
}
LEVELS = np.round(np.arange(0.50, 0.991, 0.01), 2)  # the coverage-by-level sweep
TABLE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
WILSON_Z = 1.959963984540054  # two-sided 95%
# Residuals are bimodal: the non-smokers' rare extra charges sit far beyond this gap.
LARGE_EXTRA = 5000.0

# Quoted from the project's issue; they are not recomputed here.
PYCARET_SEED, PYCARET_TEST_SIZE = 42, 0.2
PYCARET_REFERENCE: tuple[tuple[str, float, float, str], ...] = (
    ("PyCaret tutorial, linear model", 0.868, 2744.0, "–"),
    ("PyCaret tutorial, best model", 0.876, 2481.0, "0.839 (10-fold)"),
)


def render(result: TrainResult, metadata: Mapping[str, Any]) -> dict[str, bytes]:
    """Render report.md, model_card.md and the PNG plots, keyed by path inside the artifact.

    ``metadata`` is the artifact's metadata; missing keys (for example ``version`` before
    the artifact is written) are reported as not recorded rather than failing.
    """
    import matplotlib

    matplotlib.use("Agg")
    mean_abs = _mean_abs(result)
    facts = _holdout(result)
    files = {
        "report.md": _report(result, metadata, mean_abs, facts).encode("utf-8"),
        "model_card.md": _model_card(result, metadata, facts).encode("utf-8"),
    }
    files |= {PLOTS[name]: _png(fig) for name, fig in figures(result, mean_abs, facts)}
    return files


def _mean_abs(result: TrainResult) -> Array:
    """Mean absolute contribution of each input on the holdout."""
    contributions = np.asarray(result.predictor.contributions(result.X_test), dtype=np.float64)
    out: Array = np.abs(contributions).mean(axis=0) if len(contributions) else np.zeros(len(FEATURES))
    return out


# -- formatting ---------------------------------------------------------------------------


def _money(x: float) -> str:
    """US dollars with thousands separators: the data's charges are USD."""
    if not math.isfinite(x):
        return "–"
    return f"-${-x:,.0f}" if round(x) < 0 else f"${abs(x):,.0f}"


def _signed_money(x: float) -> str:
    return _money(x) if not math.isfinite(x) or round(x) < 0 else "+" + _money(x)


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else "–"


def _r2(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "–"


def _pct_ci(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return f"{lo:.1%}–{hi:.1%}" if math.isfinite(lo) and math.isfinite(hi) else "–"


def wilson(k: npt.ArrayLike, n: npt.ArrayLike, z: float = WILSON_Z) -> tuple[Array, Array]:
    """Wilson score interval for k successes in n trials (NaN where n is 0).

    Unlike the normal approximation it stays inside [0, 1] and keeps its width near 0%
    and 100%, where per-group coverage on a few dozen patients often lands.
    """
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def wilson_bars(share: npt.ArrayLike, n: npt.ArrayLike) -> Array:
    """Error-bar lengths, (2, k): how far each share's 95% Wilson interval reaches below and above it.

    ``share`` is a share of ``n`` patients (so ``share * n`` is a count); what matplotlib's
    ``xerr`` takes. Empty groups get no bar; float dust at 0% and 100% is clipped to zero.
    """
    s, count = np.asarray(share, dtype=np.float64), np.asarray(n, dtype=np.float64)
    lo, hi = wilson(np.round(s * count), count)
    out: Array = np.maximum(np.nan_to_num(np.vstack([s - lo, hi - s])), 0.0)
    return out


def _wilson1(share: float, n: int) -> tuple[float, float]:
    if n <= 0 or not math.isfinite(share):
        return math.nan, math.nan
    lo, hi = wilson(round(share * n), n)
    return float(lo), float(hi)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` holds one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, rule, *rows)]
    return "\n".join(lines)


def _value(spec: NumberField, x: float) -> str:
    return str(int(x)) if spec.integer or float(x).is_integer() else f"{x:.2f}"


def _version(metadata: Mapping[str, Any]) -> str:
    return str(metadata.get("version") or "(not recorded)")


def _data_info(result: TrainResult, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Data provenance from the metadata, falling back to the dataset the run used."""
    data = metadata.get("data") or {}
    info = {key: data.get(key, getattr(result.dataset, key, None)) for key in ("sha256", "source", "rows")}
    if isinstance(info["rows"], int):
        info["rows"] = f"{info['rows']:,}"
    return info


def _libraries(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Library versions from the metadata, else those of this process (which did the training)."""
    libs = metadata.get("libraries")
    if isinstance(libs, Mapping) and libs:
        return {str(k): str(v) for k, v in libs.items()}
    from chargecast.model.artifact import library_versions

    return library_versions()


def _chosen_row(result: TrainResult) -> dict[str, Any]:
    return next((row for row in result.leaderboard if row["model"] == result.chosen), {})


def _excluded(result: TrainResult) -> str:
    return ", ".join(f"`{f}`" for f in result.config.exclude) or "none"


# -- report.md ----------------------------------------------------------------------------


def _report(result: TrainResult, metadata: Mapping[str, Any], mean_abs: Array, facts: _Holdout) -> str:
    c, h, cv = result.config, result.metrics["holdout"], result.metrics["cv"]
    n_train, n_test = len(result.X_train), len(result.y_test)
    data = _data_info(result, metadata)
    chosen = _chosen_row(result)
    sha = str(data["sha256"] or "unknown")
    parts = [
        f"# chargecast training report: model {_version(metadata)}",
        f"Created {metadata.get('created_at') or '(not recorded)'} from `{data['source']}` "
        f"(sha256 `{sha[:12]}…`, {data['rows']} rows). "
        f"Chosen model: **`{result.chosen}`**, {chosen.get('description', '')}.",
        "## Configuration",
        _table(
            ["setting", "value"],
            [
                ["seed", str(c.seed)],
                ["holdout share", f"{c.test_size:.0%} ({n_test:,} rows; {n_train:,} rows for training)"],
                ["cross-validation", f"{c.folds} folds × {c.repeats} repeats on the training part"],
                ["interval level", f"{c.level:.0%}"],
                ["excluded inputs", _excluded(result)],
                ["training time", f"{result.seconds:.1f} s"],
            ],
            "ll",
        ),
        "## Model selection",
        "Candidates are ranked by mean CV R² on the training part; the first is refit on the whole "
        "training part. R² is given as mean ± standard deviation over folds. Interval coverage and "
        "width are measured fold by fold, with equal-tailed intervals calibrated on the other folds' "
        "out-of-fold residuals. Fit time covers all folds of one candidate.",
        _leaderboard(result),
        "## Holdout",
        f"The {n_test} holdout rows were set aside before anything else and scored once, after the "
        "model was selected and refit; no choice depends on them.",
        _table(
            ["metric", "value"],
            [
                ["R²", _r2(h["r2"])],
                ["MAE", _money(h["mae"])],
                ["RMSE", _money(h["rmse"])],
                [
                    "interval coverage",
                    f"{_pct(h['coverage'])} (nominal {c.level:.0%}; {_pct(facts.below)} below, "
                    f"{_pct(facts.above)} above)",
                ],
                ["mean interval width", _money(h["mean_interval_width"])],
                ["total bias", f"{h['total_bias']:+.1%} (sum of forecasts vs sum of charges; + = over)"],
            ],
        ),
        f"Cross-validation for comparison: R² {_r2(cv['r2_mean'])} ± {_r2(cv['r2_std'])}, "
        f"MAE {_money(cv['mae_mean'])}, coverage {_pct(cv['coverage'])}.",
        *_splits_section(result, metadata),
        *_interval_section(result, facts),
        *_exclusion_section(result),
        *_pycaret_section(result),
        "## Explanations",
        "Mean absolute contribution of each input on the holdout, in charges. Contributions are "
        f"exact Shapley values against the training data; each row's sum is its forecast minus the "
        f"baseline {_money(result.predictor.baseline)}.",
        _table(
            ["input", "mean absolute contribution"],
            [[f"`{name}`", _money(float(v))] for name, v in zip(FEATURES, mean_abs, strict=True)],
        ),
        "## Plots",
        "\n".join(
            [
                f"- [Predicted vs actual on the holdout]({PLOTS['predicted_vs_actual']})",
                f"- [Residuals vs predicted]({PLOTS['residuals']})",
                f"- [Interval coverage, tails and width by group]({PLOTS['interval_coverage']})",
                f"- [Interval coverage and tails across levels]({PLOTS['coverage_by_level']})",
                f"- [Mean absolute contribution per input]({PLOTS['contributions']})",
            ]
        ),
    ]
    return "\n\n".join(parts) + "\n"


def _leaderboard(result: TrainResult) -> str:
    rows = []
    for row in result.leaderboard:
        name = f"**`{row['model']}`** (chosen)" if row["model"] == result.chosen else f"`{row['model']}`"
        rows.append(
            [
                name,
                f"{_r2(row['r2_mean'])} ± {_r2(row['r2_std'])}",
                _money(row["mae_mean"]),
                _money(row["rmse_mean"]),
                _pct(row["coverage"]),
                _money(row["mean_interval_width"]),
                f"{row['fit_seconds']:.2f}",
            ]
        )
    header = ["model", "CV R²", "CV MAE", "CV RMSE", "CV coverage", "mean width", "fit s"]
    return _table(header, rows)


@dataclass(frozen=True)
class _Holdout:
    """What the text and plots say about the interval on this run's holdout, computed once."""

    level: float
    rows: int
    below: float
    above: float
    winkler: float
    const_below: float
    const_above: float
    const_winkler: float
    above_median: float  # share of forecasts above the median of their own predictive distribution
    median_gap: float  # median of (forecast - that median)
    non_smokers: int
    large_extra: int  # non-smokers charged more than LARGE_EXTRA above their forecast
    large_extra_mean: float
    sweep: Array  # (len(LEVELS), 4): coverage, below, above, mean width at each level
    train_rows: list[int]  # training rows (calibration residuals) per group


def _holdout(result: TrainResult) -> _Holdout:
    dist, X, y, pred = result.distribution, result.X_test, result.y_test, result.pred_test
    low, high, n, alpha = result.low_test, result.high_test, len(result.y_test), 1.0 - result.distribution.level
    q = float(result.constant_band["half_width"])
    c_low, c_high = np.maximum(pred - q, 0.0), pred + q  # as train.py measures the constant band
    sweep = np.full((len(LEVELS), 4), math.nan)
    for i, level in enumerate(LEVELS):
        lo, hi = dist.apply(pred, X, float(level))
        if n:
            sweep[i] = [np.mean((y >= lo) & (y <= hi)), np.mean(y < lo), np.mean(y > hi), np.mean(hi - lo)]
    median = dist.quantiles(pred, X, [0.5])[:, 0]
    non_smoker = X[:, FEATURES.index("smoker")] == 0.0
    extra = (y - pred)[non_smoker]
    large = extra[extra > LARGE_EXTRA]
    train_groups = assign_groups(result.X_train, dist.groups)

    def share(mask: npt.NDArray[np.bool_]) -> float:
        return float(np.mean(mask)) if len(mask) else math.nan

    return _Holdout(
        level=dist.level,
        rows=n,
        below=share(y < low),
        above=share(y > high),
        winkler=winkler(y, low, high, alpha),
        const_below=share(y < c_low),
        const_above=share(y > c_high),
        const_winkler=winkler(y, c_low, c_high, alpha),
        above_median=share(pred > median),
        median_gap=float(np.median(pred - median)) if n else math.nan,
        non_smokers=len(extra),
        large_extra=len(large),
        large_extra_mean=float(large.mean()) if len(large) else math.nan,
        sweep=sweep,
        train_rows=np.bincount(train_groups, minlength=len(dist.groups)).tolist(),
    )


def _interval_section(result: TrainResult, f: _Holdout) -> list[str]:
    h = result.metrics["holdout"]
    chosen = _chosen_row(result)
    return [
        "## Prediction intervals",
        "### What the interval means",
        *_meaning(result, f),
        "### Holdout coverage by group",
        _group_table(result, f),
        _single_draw(f),
        "### Across levels",
        f"The same distributions give an interval at any level; on the holdout (the {f.level:.0%} row "
        f"is the interval above, and the [coverage-by-level plot]({PLOTS['coverage_by_level']}) "
        "shows every level from 50% to 99%):",
        _level_table(f),
        "### Against a constant band",
        _constant_band(result, f),
        f"In cross-validation the same procedure, with fold models calibrated on the other folds' "
        f"out-of-fold residuals (like with like), averaged width "
        f"{_money(chosen.get('mean_interval_width', math.nan))} at coverage "
        f"{_pct(chosen.get('coverage', math.nan))}: a check of the procedure, not of the shipped "
        f"interval, whose holdout figures are {_money(h['mean_interval_width'])} and {_pct(h['coverage'])}.",
        "### How it was calibrated",
        *_calibration(result, f),
    ]


def _meaning(result: TrainResult, f: _Holdout) -> list[str]:
    """What the interval and the forecast mean and do not mean; shared by report and card."""
    tail = (1 - f.level) / 2
    ranges = ", ".join(
        f"{spec.name} {_value(spec, result.X_train[:, j].min())} to {_value(spec, result.X_train[:, j].max())}"
        for j, spec in enumerate(FIELDS)
        if isinstance(spec, NumberField) and len(result.X_train)
    )
    if f.above_median == 1.0:
        median = f"for every holdout patient, by a median {_money(f.median_gap)}"
    else:
        median = f"for {_pct(f.above_median)} of holdout patients, by a median {_money(f.median_gap)}"
    tail_note = (
        f"{f.large_extra} of {f.non_smokers} holdout non-smokers ({_pct(f.large_extra / f.non_smokers)}) "
        f"were charged more than {_money(LARGE_EXTRA)} above their forecast, "
        f"{_money(f.large_extra_mean)} above on average"
        if f.non_smokers and f.large_extra
        else f"no holdout non-smoker was charged more than {_money(LARGE_EXTRA)} above the forecast"
    )
    groups = "; ".join(f"`{g}`" for g in result.distribution.groups)
    return [
        f"Each forecast comes with a {f.level:.0%} interval that runs from the {tail:.0%} to the "
        f"{1 - tail:.0%} quantile of charges for patients like this one. It is **equal-tailed**: "
        f"about {tail:.0%} of such patients are expected to be charged less than its lower end and "
        f"{tail:.0%} more than its upper end, overall and within each group ({groups}).",
        "What it does **not** mean:",
        "\n".join(
            [
                f"- **Not a guarantee for one patient.** {f.level:.0%} is a share over many patients "
                "like this one, on average; a single patient is either inside or not, and no input "
                f"tells in advance who will be among the {tail:.0%} above.",
                "- **The forecast is not the middle, nor the most likely charge.** It is the mean: "
                "what to budget, and what adds up over many patients. It often sits above the "
                "median, because about 1 in 10 non-smokers costs some $13,000 more than forecast "
                "and no input predicts who; the others are charged a little less than the mean. "
                f"Here the forecast is above the median of patients like them {median}, and "
                f"{tail_note}. " + _forecast_inside(result),
                "- **Not checked outside the training data.** Coverage was measured only inside the "
                f"training data's ranges ({ranges}); beyond them forecast and interval are "
                "extrapolations of unknown coverage.",
                "- **Not additive.** Patients' bounds do not add up to bounds for a total, since "
                "their extremes do not all happen together; a total needs its own interval.",
            ]
        ),
    ]


def _group_table(result: TrainResult, f: _Holdout) -> str:
    tail = (1 - f.level) / 2
    rows = []
    for g, train_rows in zip(result.by_group, f.train_rows, strict=True):
        n = int(g["rows"])
        offsets = f"{_signed_money(g['lo'])} to {_signed_money(g['hi'])}"
        borrowed = " (pooled)" if train_rows < MIN_GROUP else ""
        rows.append(
            [
                str(g["group"]),
                str(n),
                _pct(g["coverage"]),
                _pct_ci(_wilson1(g["coverage"], n)),
                _pct(g["below"]),
                _pct(g["above"]),
                _money(g["mean_interval_width"]),
                offsets,
                f"{train_rows:,}{borrowed}",
            ]
        )
    h = result.metrics["holdout"]
    rows.append(
        [
            "**all holdout**",
            str(f.rows),
            _pct(h["coverage"]),
            _pct_ci(_wilson1(h["coverage"], f.rows)),
            _pct(f.below),
            _pct(f.above),
            _money(h["mean_interval_width"]),
            "–",
            f"{len(result.X_train):,}",
        ]
    )
    header = [
        "group",
        "holdout rows",
        "coverage",
        "95% Wilson",
        f"below (expect {tail:.1%})",
        f"above (expect {tail:.1%})",
        "mean width",
        "interval around the forecast",
        "training rows",
    ]
    return _table(header, rows, "lrrrrrrrr")


def _single_draw(f: _Holdout) -> str:
    return (
        f"This is one holdout of {f.rows} patients, and a group's figures rest on a few dozen of them: "
        "the Wilson interval is how far chance alone moves a coverage of that size. The section "
        "*Random splits* gives the quality and interval figures as mean ± sd over random splits."
    )


# (figure key, label with {level} and {alpha}, how to format the mean and the fixed split, and the sd)
_SPLIT_ROWS: tuple[tuple[str, str, Any, Any], ...] = (
    ("r2", "R²", _r2, _r2),
    ("mae", "MAE", _money, _money),
    ("total_bias", "total bias (sum of forecasts vs charges)", lambda x: f"{x:+.1%}", _pct),
    ("coverage", "interval coverage at {level:.0%}", _pct, _pct),
    ("below", "share below the interval", _pct, _pct),
    ("above", "share above the interval", _pct, _pct),
    ("worst group", "coverage in the worst of 7 groups", _pct, _pct),
    ("winkler", "Winkler score, α = {alpha:.2g}", _money, _money),
    ("width", "mean interval width", _money, _money),
)


def _splits_section(result: TrainResult, metadata: Mapping[str, Any]) -> list[str]:
    """Every quality and interval figure as mean ± sd over the random splits, beside the fixed split."""
    from chargecast.training.train import split_summary  # only reached with a TrainResult, so sklearn is loaded

    c, n = result.config, len(result.splits)
    if not n:
        return ["## Random splits", "No random splits were run for this model (trained with `--splits 0`)."]
    summary = split_summary(result)
    seeds = [int(s["seed"]) for s in result.splits]
    level, alpha = result.distribution.level, 1 - result.distribution.level
    rows = []
    for key, label, fmt, fmt_sd in _SPLIT_ROWS:
        fig = summary[key]
        name = label.format(level=level, alpha=alpha)
        rows.append([name, f"{fmt(fig['mean'])} ± {fmt_sd(fig['sd'])}", fmt(fig["fixed"])])
    source = _data_info(result, metadata)["source"]
    split = f"{round(100 * (1 - c.test_size)):d}/{round(100 * c.test_size):d}"
    return [
        "## Random splits",
        f"The chosen recipe (`{result.chosen}` with its {level:.0%} interval) refit on {n} random "
        f"{split} splits (seeds {seeds[0]}–{seeds[-1]}) of `{source}`, each scored on its own "
        "holdout, beside this model's fixed split. **Nothing is chosen again**: model family, inputs "
        "and interval method are the ones selected on the fixed split, whose training rows overlap "
        "these holdouts, so the spread shows how much one holdout's figures move with the draw, "
        "not what a fresh selection would give (`make bench` reruns the selection on each split). "
        f"The worst group is the lowest coverage among {', '.join(GROUPS)}.",
        _table(["figure", f"mean ± sd over {n} splits", f"fixed split (seed {c.seed})"], rows),
    ]


def _level_table(f: _Holdout) -> str:
    rows = []
    for level in TABLE_LEVELS:
        i = int(np.argmin(np.abs(LEVELS - level)))
        cov, below, above, width = (float(v) for v in f.sweep[i])
        rows.append(
            [
                f"{level:.0%}",
                _pct(cov),
                _pct_ci(_wilson1(cov, f.rows)),
                _pct(below),
                _pct(above),
                f"{(1 - level) / 2:.1%}",
                _money(width),
            ]
        )
    header = ["level", "coverage", "95% Wilson", "below", "above", "expected in each tail", "mean width"]
    return _table(header, rows)


def _constant_band(result: TrainResult, f: _Holdout) -> str:
    const, h = result.constant_band, result.metrics["holdout"]
    ours, theirs = h["mean_interval_width"], const["mean_interval_width"]
    if not (math.isfinite(ours) and math.isfinite(theirs)) or theirs <= 0:
        versus = "the widths cannot be compared"
    elif ours <= theirs:
        versus = f"ours is {_pct(1 - ours / theirs)} narrower"
    else:
        versus = f"ours is {ours / theirs:.1f}× as wide"
    alpha = 1 - f.level
    return (
        f"A constant band (forecast ± {_money(const['half_width'])}, the {f.level:.0%} quantile of "
        f"the absolute calibration residuals, floored at zero) has mean width {_money(theirs)} and "
        f"holdout coverage {_pct(const['holdout_coverage'])}; {versus} ({_money(ours)}) at coverage "
        f"{_pct(h['coverage'])}. Coverage alone hides where the misses fall: the constant band's are "
        f"{_pct(f.const_below)} below and {_pct(f.const_above)} above, ours {_pct(f.below)} and "
        f"{_pct(f.above)}. The Winkler score (α = {alpha:.2g}: width plus {2 / alpha:.0f}× how far "
        f"each miss falls outside; lower is better) weighs both: ours {_money(f.winkler)}, the "
        f"constant band {_money(f.const_winkler)}."
    )


def _calibration(result: TrainResult, f: _Holdout) -> list[str]:
    from chargecast.training.train import JACKKNIFE_FOLDS  # only reached with a TrainResult, so sklearn is loaded

    exact = result.predictor.kind == "linear"
    how = (
        "exact for this least-squares model (each residual divided by one minus its leverage, no refits)"
        if exact
        else f"approximated by {JACKKNIFE_FOLDS}-fold cross-validation for this model"
    )
    pooled = [g for g, n in zip(result.distribution.groups, f.train_rows, strict=True) if n < MIN_GROUP]
    borrowed = (
        f" Groups with fewer than {MIN_GROUP} training rows borrow the pooled residuals; here: "
        + ", ".join(f"`{g}`" for g in pooled)
        + "."
        if pooled
        else ""
    )
    return [
        _grouping(result.distribution.groups) + " For each group the residuals "
        "(actual − forecast) of the training rows give a grid of quantiles (Harrell–Davis estimates, "
        "levels 0.1% to 99.9%); an interval at level L is the forecast plus the (1 − L)/2 and "
        f"(1 + L)/2 quantiles, floored at zero.{borrowed}",
        "The residuals are jackknife (leave-one-out) residuals of the refit model, so they describe "
        f"its errors on patients it has not seen: {how}. The 5-fold out-of-fold residuals from model "
        "selection are not used: each fold model is fitted on 80% of the rows and is shifted against "
        "the refit by its own amount, so their pooled residuals are more spread than the refit's "
        f"errors, and a {f.level:.0%} interval built on them was about 4 points conservative, "
        "nearly all of it in the lower tail.",
    ]


def _grouping(groups: Sequence[str]) -> str:
    """Why the groups are what they are; excluded inputs change them, so the text follows."""
    by_age = any("age " in g for g in groups)
    by_smoking = any(g.startswith("smoker") for g in groups)
    by_obesity = any("bmi" in g for g in groups)
    age = "the base level and the tail of extra charges shift with age"
    if by_smoking and by_age:
        first = f"Non-smokers are grouped by age band ({age})"
    elif by_age:
        first = f"Patients are grouped by age band ({age})"
    elif by_smoking:
        first = "Smokers and non-smokers are grouped apart"
    else:
        return "Smoking and age are excluded, so all patients form one group."
    if by_obesity:
        return first + ", smokers by obesity (their charges jump at bmi 30)."
    return first + ("; smokers form one group." if by_smoking and by_age else ".")


def _forecast_inside(result: TrainResult) -> str:
    """Say whether point forecasts fall inside their own intervals; a mean need not."""
    pred = result.pred_test
    if not len(pred):
        return ""
    outside = float(np.mean((pred < result.low_test) | (pred > result.high_test)))
    if outside == 0:
        return "Every holdout forecast lies inside its own interval."
    return (
        f"The point forecast (a mean, pulled up by rare large charges) lies outside its own "
        f"interval for {_pct(outside)} of holdout patients."
    )


def _exclusion_section(result: TrainResult) -> list[str]:
    ex = result.exclusion
    if not ex:
        return []
    feature, cv, h = str(ex.get("feature", "sex")), result.metrics["cv"], result.metrics["holdout"]
    ex_cv, ex_h = ex["cv"], ex["holdout"]

    def row(label: str, with_: float, without: float, fmt: str) -> list[str]:
        if fmt == "r2":
            return [label, _r2(with_), _r2(without), f"{without - with_:+.4f}"]
        return [label, _money(with_), _money(without), _signed_money(without - with_)]

    lines = [
        f"## Cost of excluding `{feature}`",
        f"The chosen model (`{ex.get('model', result.chosen)}`) cross-validated and refit without "
        f"`{feature}`, on the same folds and holdout:",
        _table(
            ["metric", f"with `{feature}`", f"without `{feature}`", "change"],
            [
                row("CV R²", cv["r2_mean"], ex_cv["r2_mean"], "r2"),
                row("CV MAE", cv["mae_mean"], ex_cv["mae_mean"], "money"),
                row("holdout R²", h["r2"], ex_h["r2"], "r2"),
                row("holdout MAE", h["mae"], ex_h["mae"], "money"),
            ],
        ),
    ]
    if feature == "sex":
        lines.append(
            "Insurers in the EU may not use sex as a factor in premiums and benefits (CJEU, "
            "Test-Achats, C-236/09; unisex rules since 21 December 2012). Train with "
            "`--exclude sex` for a model that does not use it."
        )
    return lines


def _pycaret_section(result: TrainResult) -> list[str]:
    c, h, cv = result.config, result.metrics["holdout"], result.metrics["cv"]
    rows = [[name, _r2(r2), _money(mae), cvr2] for name, r2, mae, cvr2 in PYCARET_REFERENCE]
    rows.append(
        [
            f"this run, `{result.chosen}`",
            _r2(h["r2"]),
            _money(h["mae"]),
            f"{_r2(cv['r2_mean'])} ({c.folds}-fold × {c.repeats})",
        ]
    )
    same_split = c.seed == PYCARET_SEED and math.isclose(c.test_size, PYCARET_TEST_SIZE)
    if same_split:
        note = (
            "This run uses seed 42 and a 20% holdout, so the test columns compare like with like; "
            "the CV column uses different fold schemes and is only indicative."
        )
    else:
        note = (
            f"This run uses seed {c.seed} and test size {c.test_size:g}, so these figures are not "
            "comparable: the reference numbers only apply to seed 42 with a 20% holdout."
        )
    return [
        "## Comparison with the PyCaret tutorial",
        "Reference figures quoted from the project's issue, reported for the same seed-42 split "
        "(test size 0.2); they are not recomputed here.",
        _table(["model", "test R²", "test MAE", "CV R²"], rows),
        note,
    ]


# -- model_card.md ------------------------------------------------------------------------


def _model_card(result: TrainResult, metadata: Mapping[str, Any], facts: _Holdout) -> str:
    data = _data_info(result, metadata)
    parts = [
        f"# Model card: chargecast {_version(metadata)}",
        *_card_details(result, metadata),
        *_CARD_SCOPE,
        *_card_data(result, data),
        *_card_metrics(result),
        *_splits_section(result, metadata),
        "## Intervals",
        *_meaning(result, facts),
        "Holdout coverage and tails by group:",
        _group_table(result, facts),
        _single_draw(facts),
        *_calibration(result, facts),
        "## Explanations",
        "Per-input contributions are exact Shapley values. For each patient they sum to the "
        "prediction minus the baseline, and the baseline is the mean prediction over the training "
        f"data ({_money(result.predictor.baseline)}). A contribution says how much an input moves "
        "this model's forecast, not that the input causes the charges.",
        *_card_limitations(result, data),
    ]
    return "\n\n".join(parts) + "\n"


def _card_details(result: TrainResult, metadata: Mapping[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in _libraries(metadata).items())
    details = [
        f"- Version: {_version(metadata)}",
        f"- Model: `{result.chosen}`, {_chosen_row(result).get('description', '')}",
        f"- Created: {metadata.get('created_at') or '(not recorded)'}",
        f"- Libraries: {libs}",
        f"- Inputs: {', '.join(f'`{f}`' for f in FEATURES)}; excluded: {_excluded(result)}",
        f"- Output: expected (mean) charges in USD, with an equal-tailed {result.config.level:.0%} "
        "prediction interval (any level on request) and per-input contributions",
    ]
    return ["## Model details", "\n".join(details)]


_CARD_SCOPE = (
    "## Intended use",
    "An estimate of a patient's expected medical charges at admission, for portfolio and "
    "cash-flow planning over many patients, where errors average out.",
    "## Out-of-scope uses",
    "\n".join(
        [
            "- Pricing, underwriting or accepting an individual.",
            "- Clinical decisions of any kind: the model knows no diagnosis or medical history.",
            "- Minors, or populations unlike US adults in the simulated training data.",
            "- Real-world charge levels: the data are simulated, not observed.",
        ]
    ),
)


def _card_data(result: TrainResult, data: Mapping[str, Any]) -> list[str]:
    """Where the data came from and the ranges training saw, beside those the API accepts."""
    return [
        "## Data",
        'The "insurance" data set from Brett Lantz, *Machine Learning with R* (Packt): simulated '
        "textbook data, 1,338 rows, adults in four US regions, with age, sex, bmi, children, smoker, "
        "region and charges.",
        "\n".join(
            [
                f"- File: `{data['source']}`",
                f"- sha256: `{data['sha256']}`",
                f"- Rows: {data['rows']} ({len(result.X_train):,} for training, "
                f"{len(result.y_test):,} holdout, seed {result.config.seed})",
            ]
        ),
        "## Input ranges",
        "Numeric inputs as seen in training and as accepted by the API. Values inside the accepted "
        "range but outside the training range are extrapolations: the forecast there is not "
        "supported by data.",
        _ranges_table(result.X_train),
        "Category counts in the training part:",
        _category_counts(result.X_train),
    ]


def _card_metrics(result: TrainResult) -> list[str]:
    h, cv = result.metrics["holdout"], result.metrics["cv"]
    return [
        "## Metrics",
        _table(
            ["metric", "cross-validation", "holdout (scored once)"],
            [
                ["R²", f"{_r2(cv['r2_mean'])} ± {_r2(cv['r2_std'])}", _r2(h["r2"])],
                ["MAE", _money(cv["mae_mean"]), _money(h["mae"])],
                ["RMSE", _money(cv["rmse_mean"]), _money(h["rmse"])],
                [f"{result.config.level:.0%} interval coverage", _pct(cv["coverage"]), _pct(h["coverage"])],
            ],
        ),
        "Cross-validated coverage calibrates each fold model on the other folds' residuals: it checks "
        "the procedure. The holdout column measures the interval this model ships with.",
    ]


def _card_limitations(result: TrainResult, data: Mapping[str, Any]) -> list[str]:
    uses_sex = "sex" not in result.config.exclude
    limits = [
        "- Sex is "
        + ("a rating factor in this model" if uses_sex else "excluded from this model")
        + "; pricing on sex is unlawful for insurers in the EU. Region can act as a proxy for "
        "protected characteristics.",
        "- The data are simulated textbook data: relationships are cleaner than real claims.",
        f"- The sample is small ({data['rows']} rows, few smokers per group), so each "
        "group's residual distribution, its far tails most of all, and rare profiles are "
        "estimated from few patients.",
        "- There is no medical history, diagnosis or treatment: most variation among non-smokers is unexplained.",
    ]
    return ["## Limitations and ethical considerations", "\n".join(limits)]


def _ranges_table(X: Array) -> str:
    rows = []
    for j, spec in enumerate(FIELDS):
        if isinstance(spec, NumberField):
            col = X[:, j]
            lo, hi = (float(col.min()), float(col.max())) if len(col) else (math.nan, math.nan)
            rows.append(
                [
                    spec.name,
                    _value(spec, lo),
                    _value(spec, hi),
                    f"{_value(spec, spec.minimum)} to {_value(spec, spec.maximum)}",
                ]
            )
    return _table(["input", "training min", "training max", "accepted"], rows)


def _category_counts(X: Array) -> str:
    rows = []
    for j, spec in enumerate(FIELDS):
        if isinstance(spec, CategoryField):
            counts = [f"{choice} {int(np.sum(X[:, j] == k))}" for k, choice in enumerate(spec.choices)]
            rows.append([spec.name, ", ".join(counts)])
    return _table(["input", "rows per category"], rows, "ll")


# -- plots ------------------------------------------------------------------------------


@contextmanager
def _figure(name: str, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Figure, list[Axes]]]:
    """A figure of the named plot's size under matplotlib's default style and our fonts, closed afterwards."""
    import matplotlib.pyplot as plt

    # 12 pt text at the saved size: legible without zooming.
    fonts = plt.rc_context(
        {
            "font.size": 12,
            "axes.titlesize": 14,
            "axes.labelsize": 13,
            "xtick.labelsize": 12,
            "ytick.labelsize": 12,
            "legend.fontsize": 12,
            "figure.titlesize": 15,
        }
    )
    with plt.style.context("default"), fonts:
        fig, axes = plt.subplots(1, ncols, figsize=SIZES[name], dpi=DPI, squeeze=False, layout="tight", **kwargs)
        try:
            yield fig, list(axes[0])
        finally:
            plt.close(fig)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _usd(axis: Any) -> None:
    """Money ticks as "$10,000"."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda x, _pos: _money(float(x))))


def _percent(axis: Any, decimals: int = 0) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))


def figures(
    result: TrainResult, mean_abs: Array | None = None, facts: _Holdout | None = None
) -> Iterator[tuple[str, Figure]]:
    """Each plot's name (a key of :data:`PLOTS`) and its open figure, closed when the next is drawn.

    Yielding open figures (rather than PNG bytes only) lets tests read what was drawn.
    """
    f = facts or _holdout(result)
    mean_abs = _mean_abs(result) if mean_abs is None else mean_abs
    with _figure("predicted_vs_actual") as (fig, (ax,)):
        _predicted_vs_actual(ax, result)
        yield "predicted_vs_actual", fig
    with _figure("residuals") as (fig, (ax,)):
        _residuals(ax, result)
        yield "residuals", fig
    with _figure("interval_coverage", ncols=3, sharey=True, gridspec_kw={"width_ratios": [1.25, 1, 1]}) as (fig, axes):
        _interval_coverage(fig, axes, result, f)
        yield "interval_coverage", fig
    with _figure("coverage_by_level", ncols=2) as (fig, axes):
        _coverage_by_level(axes, result, f)
        yield "coverage_by_level", fig
    with _figure("contributions") as (fig, (ax,)):
        _contributions(ax, result, mean_abs)
        yield "contributions", fig


def _group_colours(n: int) -> list[str]:
    return [GROUP_COLOURS[k % len(GROUP_COLOURS)] for k in range(n)]


def _predicted_vs_actual(ax: Axes, result: TrainResult) -> None:
    y, pred, low, high = result.y_test, result.pred_test, result.low_test, result.high_test
    top = float(max(y.max(initial=0.0), high.max(initial=0.0), pred.max(initial=0.0))) * 1.03
    inside, below, above = (y >= low) & (y <= high), y < low, y > high
    # Inside first, so the misses are drawn on top where intervals overlap.
    for mask, colour, where, alpha in (
        (inside, INSIDE, "inside", 0.35),
        (below, BELOW, "below", 0.9),
        (above, ABOVE, "above", 0.9),
    ):
        count = int(mask.sum())
        ax.vlines(pred[mask], low[mask], high[mask], colors=colour, alpha=alpha, linewidth=1.6)
        label = f"actual {where} its interval: {count} ({_pct(count / len(y) if len(y) else math.nan)})"
        ax.scatter(pred[mask], y[mask], s=22, color=colour, label=label, zorder=3)
    ax.plot([0, top], [0, top], color="black", linestyle="--", linewidth=1, label="actual = forecast")
    ax.set(xlim=(0, top), ylim=(0, top))
    ax.set_xlabel("forecast charges (USD)")
    ax.set_ylabel("actual charges (USD)")
    ax.set_title(
        f"Holdout: each patient's {result.distribution.level:.0%} interval (vertical bar) at its forecast, "
        "and the actual charge (dot)"
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    _usd(ax.xaxis)
    _usd(ax.yaxis)


def _residuals(ax: Axes, result: TrainResult) -> None:
    y, pred, names = result.y_test, result.pred_test, result.distribution.groups
    groups = assign_groups(result.X_test, names)
    for k, (name, colour) in enumerate(zip(names, _group_colours(len(names)), strict=True)):
        m = groups == k
        ax.scatter(pred[m], y[m] - pred[m], s=18, color=colour, label=f"{name} ({int(m.sum())})")
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xlabel("forecast charges (USD)")
    ax.set_ylabel("actual − forecast (USD)")
    ax.set_title("Holdout residuals by interval group: most just below zero, a few far above")
    ax.legend(loc="lower left", ncols=2)
    ax.grid(alpha=0.3)
    _usd(ax.xaxis)
    _usd(ax.yaxis)


@dataclass(frozen=True)
class _GroupRows:
    """The interval-coverage plot's rows: each group, then the whole holdout, first on top."""

    rows: list[int]
    coverage: Array
    below: Array
    above: Array
    width: Array
    labels: list[str]
    pos: Array
    colours: list[str]


def _group_rows(result: TrainResult, f: _Holdout) -> _GroupRows:
    h, groups, names = result.metrics["holdout"], result.by_group, list(result.distribution.groups)
    rows = [int(g["rows"]) for g in groups] + [f.rows]
    labels = [f"{name}\n({n} patients)" for name, n in zip([*names, "all holdout"], rows, strict=True)]
    return _GroupRows(
        rows=rows,
        coverage=np.array([float(g["coverage"]) for g in groups] + [float(h["coverage"])]),
        below=np.array([float(g["below"]) for g in groups] + [f.below]),
        above=np.array([float(g["above"]) for g in groups] + [f.above]),
        width=np.array([float(g["mean_interval_width"]) for g in groups] + [float(h["mean_interval_width"])]),
        labels=labels,
        pos=np.arange(len(labels))[::-1].astype(np.float64),
        colours=[*_group_colours(len(names)), "#333333"],
    )


def _interval_coverage(fig: Figure, axes: list[Axes], result: TrainResult, f: _Holdout) -> None:
    from matplotlib.layout_engine import TightLayoutEngine

    g, level = _group_rows(result, f), result.distribution.level
    _coverage_panel(axes[0], g, level)
    _tails_panel(axes[1], g, (1 - level) / 2)
    _width_panel(axes[2], g, result.constant_band)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Holdout, {level:.0%} intervals by group")
    fig.set_layout_engine(TightLayoutEngine(w_pad=3.0))  # keep one panel's "100%" off the next one's "0%"


def _coverage_panel(ax: Axes, g: _GroupRows, level: float) -> None:
    cov, pos = g.coverage, g.pos
    cov_err = wilson_bars(cov, g.rows)
    for i in range(len(g.labels)):
        ax.errorbar(cov[i], pos[i], xerr=cov_err[:, i : i + 1], fmt="o", color=g.colours[i], capsize=6, markersize=8)
        if math.isfinite(cov[i]):
            ax.annotate(
                _pct(cov[i]), (cov[i], pos[i]), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=11
            )
    ax.axvline(level, color="black", linestyle="--", linewidth=1, label=f"nominal {level:.0%}")
    low_edge = np.nanmin(cov - cov_err[0], initial=level)
    ax.set_xlim(min(0.5, math.floor(low_edge * 20) / 20), 1.0)
    ax.set_yticks(pos, g.labels)
    ax.set_ylim(pos.min() - 0.6, pos.max() + 0.6)
    ax.set_xlabel("share of holdout patients inside")
    ax.set_title("Coverage (95% Wilson)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13))
    _percent(ax.xaxis)


def _tails_panel(ax: Axes, g: _GroupRows, tail: float) -> None:
    bar = 0.36
    for share, colour, where, shift in ((g.below, BELOW, "below", bar / 2), (g.above, ABOVE, "above", -bar / 2)):
        ax.barh(
            g.pos + shift,
            np.nan_to_num(share),
            height=bar,
            color=colour,
            xerr=wilson_bars(share, g.rows),
            ecolor="#555555",
            capsize=3,
            label=f"{where} the interval",
        )
    ax.axvline(tail, color="black", linestyle="--", linewidth=1, label=f"expected {tail:.0%} each")
    ax.set_xlim(0, max(0.2, float(np.nanmax(np.append(wilson_bars(g.above, g.rows)[1] + g.above, 0.0))) * 1.05))
    ax.set_xlabel("share of holdout patients")
    ax.set_title("Misses below and above (95% Wilson)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2)
    _percent(ax.xaxis)


def _width_panel(ax: Axes, g: _GroupRows, constant_band: Mapping[str, float]) -> None:
    bars = ax.barh(g.pos, np.nan_to_num(g.width), height=0.6, color=g.colours)
    ax.bar_label(bars, labels=[_money(v) for v in g.width], padding=4, fontsize=11)
    ax.axvline(
        constant_band["mean_interval_width"],
        color="black",
        linestyle=":",
        linewidth=1.5,
        label=f"constant band (forecast ± {_money(constant_band['half_width'])})",
    )
    ax.set_xlim(0, float(np.nanmax(np.append(g.width, 1.0))) * 1.3)
    ax.set_xlabel("mean interval width (USD)")
    ax.set_title("Width")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13))
    _usd(ax.xaxis)


def _coverage_by_level(axes: list[Axes], result: TrainResult, f: _Holdout) -> None:
    ax_cov, ax_tail = axes
    level, n = result.distribution.level, np.full(len(LEVELS), f.rows)
    cov, below, above = f.sweep[:, 0], f.sweep[:, 1], f.sweep[:, 2]
    lo, hi = wilson(np.round(cov * f.rows), n)
    ax_cov.fill_between(LEVELS, lo, hi, color=INSIDE, alpha=0.3, label="95% Wilson interval")
    ax_cov.plot(LEVELS, cov, color="black", linewidth=2, label="holdout coverage")
    ax_cov.plot([0.5, 1.0], [0.5, 1.0], color="#4c72b0", linestyle="--", linewidth=1.5, label="coverage = level")
    ax_cov.axvline(level, color="#555555", linestyle=":", linewidth=1, label=f"default level {level:.0%}")
    ax_cov.set(xlim=(0.5, 1.0), ylim=(0.4, 1.0))
    ax_cov.set_xlabel("interval level")
    ax_cov.set_ylabel("share of holdout patients inside")
    ax_cov.set_title("Coverage against the level")
    ax_cov.legend(loc="upper left")
    for share, colour, where in ((below, BELOW, "below"), (above, ABOVE, "above")):
        lo, hi = wilson(np.round(share * f.rows), n)
        ax_tail.fill_between(LEVELS, lo, hi, color=colour, alpha=0.18)
        ax_tail.plot(LEVELS, share, color=colour, linewidth=2, label=f"{where} the interval")
    ax_tail.plot(
        LEVELS, (1 - LEVELS) / 2, color="black", linestyle="--", linewidth=1.5, label="expected: (1 − level) / 2"
    )
    ax_tail.set(xlim=(0.5, 1.0), ylim=(0.0, 0.3))
    ax_tail.set_xlabel("interval level")
    ax_tail.set_ylabel("share of holdout patients")
    ax_tail.set_title("Misses in each tail (shaded: 95% Wilson interval)")
    ax_tail.legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
        _percent(ax.xaxis)
        _percent(ax.yaxis)


def _contributions(ax: Axes, result: TrainResult, mean_abs: Array) -> None:
    order = np.argsort(mean_abs, kind="stable")
    bars = ax.barh([FEATURES[i] for i in order], mean_abs[order], color="#4c72b0")
    ax.bar_label(bars, labels=[_money(float(v)) for v in mean_abs[order]], padding=4, fontsize=11)
    ax.set_xlim(0, float(mean_abs.max(initial=1.0)) * 1.15)
    ax.set_xlabel("mean absolute contribution on the holdout (USD)")
    ax.set_title(f"How far each input moves the forecast from the baseline {_money(result.predictor.baseline)}")
    ax.grid(axis="x", alpha=0.3)
    _usd(ax.xaxis)
