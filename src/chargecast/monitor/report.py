"""The drift and performance reports: markdown beside PNG plots (matplotlib, Agg).

For operators' machines only: serving never imports this module (import-linter holds it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chargecast.model.reference import Reference
from chargecast.monitor import drift
from chargecast.monitor.performance import FEW, Figures
from chargecast.schema import FIELD_BY_NAME, FIELDS, CategoryField


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.1%}"


def _money(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.0f}"


def _plot_feature(plt: Any, name: str, ref: Reference, window: drift.Window, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    spec = FIELD_BY_NAME[name]
    if isinstance(spec, CategoryField):
        x = np.arange(len(spec.choices))
        counts = window.counts[name]
        ax.bar(x - 0.2, [ref.categories[name][c] for c in spec.choices], 0.4, label="training")
        ax.bar(x + 0.2, counts / max(counts.sum(), 1), 0.4, label="window")
        ax.set_xticks(x, spec.choices)
        ax.set_ylabel("share")
    else:
        grid = np.asarray(ref.numbers[name].quantiles)
        ax.plot(grid, np.linspace(0, 1, len(grid)), label="training")
        values = np.sort(window.numbers[name])
        ax.plot(values, np.arange(1, len(values) + 1) / max(len(values), 1), label="window", drawstyle="steps-post")
        ax.set_xlabel(name)
        ax.set_ylabel("cumulative share")
    ax.set_title(f"{name}: training vs window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def drift_report(
    out: Path, ref: Reference, window: drift.Window, scores: Sequence[drift.Score], heading: dict[str, str]
) -> Path:
    """Write ``drift.md`` and one plot per input into ``out``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    flagged = drift.flagged(scores)
    lines = ["# Input drift", ""]
    lines += [f"- {k}: {v}" for k, v in heading.items()]
    lines += [f"- records in the window: {window.rows:,} (training reference: {ref.rows:,} rows)"]
    if window.rows < drift.MIN_RECORDS:
        lines.append(f"- **warning**: fewer than {drift.MIN_RECORDS:,} records; noise alone can cross thresholds")
    for name, n in window.unknown.items():
        lines.append(f"- {n:,} records had a {name} outside the schema's choices and were skipped")
    lines += ["", f"**Flagged: {', '.join(flagged) if flagged else 'none'}**", ""]
    lines += ["| feature | statistic | value | threshold | records | result |", "|---|---|---:|---:|---:|---|"]
    for s in scores:
        result = "FLAGGED" if s.flagged else "ok"
        lines.append(f"| {s.feature} | {s.statistic} | {s.value:.4f} | {s.threshold:g} | {s.records:,} | {result} |")
    lines.append("")
    for spec in FIELDS:
        png = f"drift_{spec.name}.png"
        _plot_feature(plt, spec.name, ref, window, out / png)
        lines += [f"![{spec.name}]({png})", ""]
    lines += [
        "Statistics: numbers, Wasserstein-1 in training standard deviations; categories, "
        "Jensen-Shannon distance (base 2, 0 to 1); both, PSI over the training deciles or choices "
        f"(shares floored at {drift.PSI_FLOOR:g}). See docs/monitoring.md.",
    ]
    path = out / "drift.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(title: str, rows: Sequence[tuple[str, Figures]]) -> list[str]:
    out = [f"## By {title}" if title != "overall" else "## Overall", ""]
    out += [
        "| group | records | MAE | total bias | coverage | below low | above high | mean width | level |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in rows:
        few = " (few)" if 0 < f.records < FEW else ""
        out.append(
            f"| {name}{few} | {f.records:,} | {_money(f.mae)} | {'–' if math.isnan(f.bias) else f'{f.bias:+.2%}'} "
            f"| {_pct(f.coverage)} | {_pct(f.below)} | {_pct(f.above)} | {_money(f.width)} | {_pct(f.level)} |"
        )
    return [*out, ""]


def _plot_coverage(plt: Any, tables: dict[str, list[tuple[str, Figures]]], path: Path) -> None:
    rows = [(f"{t}: {n}", f) for t in ("evaluation group", "month", "model version") for n, f in tables[t]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, [f.coverage for _, f in rows], color="#4c72b0")
    level = tables["overall"][0][1].level
    if not math.isnan(level):
        ax.axvline(level, color="k", linestyle="--", label=f"nominal {level:.0%}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, [n for n, _ in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("interval coverage")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def performance_report(out: Path, tables: dict[str, list[tuple[str, Figures]]], heading: dict[str, str]) -> Path:
    """Write ``performance.md`` and its coverage plot into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Realised performance", ""] + [f"- {k}: {v}" for k, v in heading.items()] + [""]
    lines += [
        "MAE is mean |forecast − actual|; total bias is (Σ forecast − Σ actual) / Σ actual (+ = forecasts ran "
        "high); coverage is the share of actuals inside [low, high], 'below low' and 'above high' the misses "
        f"per tail (each should be about (1 − level) / 2). Groups under {FEW} records are marked (few).",
        "",
    ]
    for title, rows in tables.items():
        lines += _table(title, rows)
    _plot_coverage(_pyplot(), tables, out / "performance_coverage.png")
    lines += ["![coverage by group](performance_coverage.png)", ""]
    path = out / "performance.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
