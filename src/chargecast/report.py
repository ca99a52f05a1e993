"""The training report and model card, rendered to bytes for the artifact directory.

Reviewers (engineers, actuaries) need the numbers a run produced next to the caveats that
qualify them, in files that travel with the model. Everything is taken from the
:class:`~chargecast.train.TrainResult`; only training ranges and the contribution summary
are computed here. matplotlib is imported inside :func:`render`, so importing this module
costs nothing on the serving path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from chargecast.intervals import assign_groups
from chargecast.schema import FEATURES, FIELDS, CategoryField, NumberField

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from chargecast.train import TrainResult

Array = npt.NDArray[np.float64]

PLOTS: dict[str, str] = {
    "predicted_vs_actual": "plots/predicted_vs_actual.png",
    "residuals": "plots/residuals.png",
    "interval_coverage": "plots/interval_coverage.png",
    "contributions": "plots/contributions.png",
}
# Fixed colours per interval group, so every plot reads the same way.
GROUP_COLOURS = ("#4c72b0", "#dd8452", "#c44e52", "#55a868")
FIGSIZE, WIDE_FIGSIZE, DPI = (6.0, 4.0), (7.5, 4.0), 100

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
    contributions = np.asarray(result.predictor.contributions(result.X_test), dtype=np.float64)
    mean_abs = np.abs(contributions).mean(axis=0) if len(contributions) else np.zeros(len(FEATURES))
    files = {
        "report.md": _report(result, metadata, mean_abs).encode("utf-8"),
        "model_card.md": _model_card(result, metadata).encode("utf-8"),
    }
    files |= _plots(result, mean_abs)
    return files


# -- formatting ---------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "–"


def _signed_money(x: float) -> str:
    return f"{x:+,.0f}" if math.isfinite(x) else "–"


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else "–"


def _r2(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "–"


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
    from chargecast.artifact import library_versions

    return library_versions()


def _chosen_row(result: TrainResult) -> dict[str, Any]:
    return next((row for row in result.leaderboard if row["model"] == result.chosen), {})


def _excluded(result: TrainResult) -> str:
    return ", ".join(f"`{f}`" for f in result.config.exclude) or "none"


# -- report.md ----------------------------------------------------------------------------


def _report(result: TrainResult, metadata: Mapping[str, Any], mean_abs: Array) -> str:
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
        "width are measured fold by fold, with windows calibrated on the other folds' out-of-fold "
        "residuals. Fit time covers all folds of one candidate.",
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
                ["interval coverage", f"{_pct(h['coverage'])} (nominal {c.level:.0%})"],
                ["mean interval width", _money(h["mean_interval_width"])],
                ["total bias", f"{h['total_bias']:+.1%} (sum of forecasts vs sum of charges; + = over)"],
            ],
        ),
        f"Cross-validation for comparison: R² {_r2(cv['r2_mean'])} ± {_r2(cv['r2_std'])}, "
        f"MAE {_money(cv['mae_mean'])}, coverage {_pct(cv['coverage'])}.",
        *_interval_section(result),
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
                f"- [Interval coverage and width by group]({PLOTS['interval_coverage']})",
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


def _interval_section(result: TrainResult) -> list[str]:
    h, level = result.metrics["holdout"], result.distribution.level
    rows = [
        [
            str(g["group"]),
            str(g["rows"]),
            _pct(g["coverage"]),
            _money(g["mean_interval_width"]),
            _signed_money(g["lo"]),
            _signed_money(g["hi"]),
        ]
        for g in result.by_group
    ]
    const = result.constant_band
    ours, theirs = h["mean_interval_width"], const["mean_interval_width"]
    ratio = 1 - ours / theirs if theirs > 0 else math.nan
    if not math.isfinite(ratio):
        versus = "the widths cannot be compared"
    elif ratio >= 0:
        versus = f"ours is {_pct(ratio)} narrower"
    else:
        versus = f"ours is {_pct(-ratio)} wider"
    chosen = _chosen_row(result)
    return [
        "## Prediction intervals",
        f"Each forecast gets the {level:.0%} interval [forecast + lo, forecast + hi], floored at zero, "
        "where the window (lo, hi) is calibrated separately for each group on out-of-fold residuals "
        "(Mondrian split-conformal, narrowest of a few windows). Holdout coverage and width by group:",
        _table(["group", "holdout rows", "coverage", "mean width", "window lo", "window hi"], rows),
        f"A constant-width split-conformal band (forecast ± {_money(const['half_width'])}) has mean "
        f"width {_money(theirs)} and holdout coverage {_pct(const['holdout_coverage'])}; {versus} "
        f"({_money(ours)}) at coverage {_pct(h['coverage'])}. In cross-validation the same "
        f"procedure averaged width {_money(chosen.get('mean_interval_width', math.nan))} at "
        f"coverage {_pct(chosen.get('coverage', math.nan))}: the holdout width is a single draw.",
        "Residuals are skewed: most patients sit just below the mean and a minority carry large "
        "extra charges, so the windows are asymmetric. " + _forecast_inside(result),
    ]


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


def _model_card(result: TrainResult, metadata: Mapping[str, Any]) -> str:
    c, h, cv = result.config, result.metrics["holdout"], result.metrics["cv"]
    data = _data_info(result, metadata)
    chosen = _chosen_row(result)
    libs = ", ".join(f"{k} {v}" for k, v in _libraries(metadata).items())
    uses_sex = "sex" not in c.exclude
    parts = [
        f"# Model card: chargecast {_version(metadata)}",
        "## Model details",
        "\n".join(
            [
                f"- Version: {_version(metadata)}",
                f"- Model: `{result.chosen}`, {chosen.get('description', '')}",
                f"- Created: {metadata.get('created_at') or '(not recorded)'}",
                f"- Libraries: {libs}",
                f"- Inputs: {', '.join(f'`{f}`' for f in FEATURES)}; excluded: {_excluded(result)}",
                f"- Output: expected charges (USD) with a {c.level:.0%} prediction interval and "
                "per-input contributions",
            ]
        ),
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
        "## Data",
        'The "insurance" data set from Brett Lantz, *Machine Learning with R* (Packt): simulated '
        "textbook data, 1,338 rows, adults in four US regions, with age, sex, bmi, children, smoker, "
        "region and charges.",
        "\n".join(
            [
                f"- File: `{data['source']}`",
                f"- sha256: `{data['sha256']}`",
                f"- Rows: {data['rows']} ({len(result.X_train):,} for training, "
                f"{len(result.y_test):,} holdout, seed {c.seed})",
            ]
        ),
        "## Input ranges",
        "Numeric inputs as seen in training and as accepted by the API. Values inside the accepted "
        "range but outside the training range are extrapolations: the forecast there is not "
        "supported by data.",
        _ranges_table(result.X_train),
        "Category counts in the training part:",
        _category_counts(result.X_train),
        "## Metrics",
        _table(
            ["metric", "cross-validation", "holdout (scored once)"],
            [
                ["R²", f"{_r2(cv['r2_mean'])} ± {_r2(cv['r2_std'])}", _r2(h["r2"])],
                ["MAE", _money(cv["mae_mean"]), _money(h["mae"])],
                ["RMSE", _money(cv["rmse_mean"]), _money(h["rmse"])],
                [f"{c.level:.0%} interval coverage", _pct(cv["coverage"]), _pct(h["coverage"])],
            ],
        ),
        "## Intervals",
        f"{c.level:.0%} split-conformal intervals calibrated on out-of-fold residuals, separately for "
        f"each group ({'; '.join(f'`{g}`' for g in result.distribution.groups)}). Coverage holds on average "
        "over patients like those in the training data, within each group; it is not a guarantee for "
        "any single patient and does not carry over to patients unlike the training data. " + _forecast_inside(result),
        "## Explanations",
        "Per-input contributions are exact Shapley values. For each patient they sum to the "
        "prediction minus the baseline, and the baseline is the mean prediction over the training "
        f"data ({_money(result.predictor.baseline)}). A contribution says how much an input moves "
        "this model's forecast, not that the input causes the charges.",
        "## Limitations and ethical considerations",
        "\n".join(
            [
                "- Sex is "
                + ("a rating factor in this model" if uses_sex else "excluded from this model")
                + "; pricing on sex is unlawful for insurers in the EU. Region can act as a proxy for "
                "protected characteristics.",
                "- The data are simulated textbook data: relationships are cleaner than real claims.",
                f"- The sample is small ({data['rows']} rows, few smokers per group), so group "
                "interval windows and rare profiles are estimated from few patients.",
                "- There is no medical history, diagnosis or treatment: most variation among "
                "non-smokers is unexplained.",
            ]
        ),
    ]
    return "\n\n".join(parts) + "\n"


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


# -- plots --------------------------------------------------------------------------------


@contextmanager
def _figure(figsize: tuple[float, float] = FIGSIZE, ncols: int = 1) -> Iterator[tuple[Figure, list[Axes]]]:
    """A figure under matplotlib's default style, closed afterwards whatever happens."""
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        fig, axes = plt.subplots(1, ncols, figsize=figsize, dpi=DPI, squeeze=False)
        try:
            yield fig, list(axes[0])
        finally:
            plt.close(fig)


def _png(fig: Figure) -> bytes:
    from matplotlib.ticker import StrMethodFormatter

    for ax in fig.axes:  # thousands separators on money axes; coverage keeps its decimals
        for axis in (ax.xaxis, ax.yaxis):
            if max(axis.get_view_interval()) > 100:
                axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _plots(result: TrainResult, mean_abs: Array) -> dict[str, bytes]:
    groups = assign_groups(result.X_test, result.distribution.groups)
    names = list(result.distribution.groups)
    colours = [GROUP_COLOURS[k % len(GROUP_COLOURS)] for k in range(len(names))]
    y, pred, low, high = result.y_test, result.pred_test, result.low_test, result.high_test
    out: dict[str, bytes] = {}

    with _figure() as (fig, (ax,)):
        top = float(max(y.max(initial=0.0), high.max(initial=0.0), pred.max(initial=0.0))) * 1.03
        for k, name in enumerate(names):
            m = groups == k
            ax.vlines(pred[m], low[m], high[m], colors=colours[k], alpha=0.5, linewidth=1.5)
            ax.scatter(pred[m], y[m], s=10, color=colours[k], label=f"{name} ({int(m.sum())})")
        ax.plot([0, top], [0, top], color="black", linestyle="--", linewidth=1, label="actual = predicted")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="predicted charges", ylabel="actual charges")
        ax.set_title(f"Holdout: predicted vs actual, with {result.distribution.level:.0%} intervals", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        out[PLOTS["predicted_vs_actual"]] = _png(fig)

    with _figure() as (fig, (ax,)):
        for k, name in enumerate(names):
            m = groups == k
            ax.scatter(pred[m], y[m] - pred[m], s=10, color=colours[k], label=name)
        ax.axhline(0, color="black", linewidth=1)
        ax.set(xlabel="predicted charges", ylabel="actual − predicted")
        ax.set_title("Holdout residuals", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
        out[PLOTS["residuals"]] = _png(fig)

    with _figure(WIDE_FIGSIZE, ncols=2) as (fig, (ax_cov, ax_wid)):
        h = result.metrics["holdout"]
        labels = [*names, "all"]
        cov = [float(g["coverage"]) for g in result.by_group] + [float(h["coverage"])]
        wid = [float(g["mean_interval_width"]) for g in result.by_group] + [float(h["mean_interval_width"])]
        pos = np.arange(len(labels))
        bar_colours = [*colours, "#8c8c8c"]
        bars = ax_cov.bar(pos, np.nan_to_num(cov), color=bar_colours)
        ax_cov.bar_label(bars, labels=[_pct(v) for v in cov], fontsize=7)
        ax_cov.axhline(
            result.distribution.level,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"nominal {result.distribution.level:.0%}",
        )
        ax_cov.set(ylim=(0, 1.1), ylabel="holdout coverage")
        ax_cov.set_title("Coverage by group", fontsize=10)
        ax_cov.legend(fontsize=8, loc="lower right")
        bars = ax_wid.bar(pos, np.nan_to_num(wid), color=bar_colours)
        ax_wid.bar_label(bars, labels=[_money(v) for v in wid], fontsize=7)
        ax_wid.axhline(
            result.constant_band["mean_interval_width"],
            color="black",
            linestyle=":",
            linewidth=1,
            label="constant band",
        )
        ax_wid.set(ylabel="mean interval width")
        ax_wid.set_title("Mean width by group", fontsize=10)
        ax_wid.legend(fontsize=8, loc="upper right")
        for ax in (ax_cov, ax_wid):
            ax.set_xticks(pos, labels, fontsize=7, rotation=20, ha="right")
        out[PLOTS["interval_coverage"]] = _png(fig)

    with _figure() as (fig, (ax,)):
        order = np.argsort(mean_abs, kind="stable")
        ax.barh([FEATURES[i] for i in order], mean_abs[order], color="#4c72b0")
        ax.set(xlabel="mean |contribution| on the holdout (charges)")
        ax.set_title(f"Contributions vs baseline {_money(result.predictor.baseline)}", fontsize=10)
        out[PLOTS["contributions"]] = _png(fig)

    return out
