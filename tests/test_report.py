"""The report and model card: every file renders, and the text carries the run's own numbers."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from chargecast.report import PLOTS, render
from chargecast.schema import FEATURES, encode_columns

if TYPE_CHECKING:
    from chargecast.train import TrainResult

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "insurance.csv"
SRC = Path(__file__).resolve().parents[1] / "src"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA: dict[str, Any] = {
    "version": "20260101-0123abcd",
    "created_at": "2026-01-01T00:00:00+00:00",
    "data": {"sha256": "0" * 64, "source": "insurance.csv", "rows": 1338},
    "libraries": {"python": "3.11", "numpy": "2.0"},
}


def _train_module() -> types.ModuleType:
    """chargecast.train, with chargecast.data stubbed only while the real module is absent."""
    try:
        importlib.import_module("chargecast.data")
    except ImportError:
        stub = cast(types.ModuleType, types.SimpleNamespace(Dataset=object))
        sys.modules.setdefault("chargecast.data", stub)
    return importlib.import_module("chargecast.train")


@pytest.fixture(scope="module")
def insurance_frame() -> pd.DataFrame:
    if not DATA.is_file():
        pytest.skip(f"shared data not found at {DATA}")
    return pd.read_csv(DATA)


@pytest.fixture(scope="module")
def report_result(insurance_frame: pd.DataFrame) -> TrainResult:
    """One quick training run (a single CV repeat) on the shared data, seed 42."""
    df = insurance_frame
    dataset: Any = types.SimpleNamespace(
        X=encode_columns({c: df[c].to_numpy() for c in FEATURES}),
        y=df["charges"].to_numpy(dtype=np.float64),
        rows=len(df),
        sha256=hashlib.sha256(DATA.read_bytes()).hexdigest(),
        source=str(DATA),
    )
    train = _train_module()
    result: TrainResult = train.train(dataset, train.TrainConfig(repeats=1))
    return result


@pytest.fixture(scope="module")
def rendered(report_result: TrainResult) -> dict[str, bytes]:
    return render(report_result, METADATA)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def test_render_produces_every_file(rendered: dict[str, bytes]) -> None:
    assert set(rendered) == {"report.md", "model_card.md", *PLOTS.values()}
    assert all(name.startswith("plots/") and name.endswith(".png") for name in PLOTS.values())
    assert all(isinstance(content, bytes) and content for content in rendered.values())


@pytest.mark.parametrize("name", sorted(PLOTS.values()))
def test_plots_are_real_pngs(rendered: dict[str, bytes], name: str) -> None:
    import matplotlib.image

    content = rendered[name]
    assert content.startswith(PNG_SIGNATURE)
    image = np.asarray(matplotlib.image.imread(io.BytesIO(content), format="png"))
    height, width = image.shape[:2]
    assert image.ndim == 3
    assert height >= 200
    assert width >= 300
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
    assert len(colours) > 20, "the plot is (nearly) blank"


def test_report_names_chosen_model_and_holdout_r2(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    report = rendered["report.md"].decode()
    assert report.startswith(f"# chargecast training report: model {METADATA['version']}")
    assert f"`{report_result.chosen}`" in report
    r2 = report_result.metrics["holdout"]["r2"]
    assert f"| R² | {r2:.3f} |" in _section(report, "Holdout")
    assert "scored once" in report


def test_leaderboard_has_one_row_per_candidate(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    train = _train_module()
    lines = _section(rendered["report.md"].decode(), "Model selection").splitlines()
    rows = [line for line in lines if line.startswith("| ")][2:]  # skip header and rule
    assert len(rows) == len(report_result.leaderboard) == len(train.CANDIDATES)
    for entry, line in zip(report_result.leaderboard, rows, strict=True):
        assert f"`{entry['model']}`" in line
        assert ("(chosen)" in line) == (entry["model"] == report_result.chosen)


def test_model_card_states_the_training_ranges(insurance_frame: pd.DataFrame, rendered: dict[str, bytes]) -> None:
    """Recompute the training split from the raw CSV, independently of the training code."""
    train_idx, _ = train_test_split(np.arange(len(insurance_frame)), test_size=0.2, random_state=42)
    part = insurance_frame.iloc[train_idx]
    card = rendered["model_card.md"].decode()
    assert f"| age | {part['age'].min()} | {part['age'].max()} | 18 to 100 |" in card
    assert f"| bmi | {part['bmi'].min():.2f} | {part['bmi'].max():.2f} |" in card
    smokers = int((part["smoker"] == "yes").sum())
    assert f"| smoker | no {len(part) - smokers}, yes {smokers} |" in card
    assert METADATA["version"] in card
    assert METADATA["data"]["sha256"] in card


def test_exclusion_section_only_when_exclusion_is_set(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    assert report_result.exclusion is not None  # sex is not excluded by default, so its cost is measured
    heading = "## Cost of excluding `sex`"
    with_section = rendered["report.md"].decode()
    assert heading in with_section
    ex_r2 = report_result.exclusion["holdout"]["r2"]
    assert f"{ex_r2:.3f}" in _section(with_section, "Cost of excluding")
    without = render(dataclasses.replace(report_result, exclusion=None), METADATA)["report.md"].decode()
    assert "Cost of excluding" not in without


def test_constant_band_comparison_uses_the_run_numbers(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    ours = report_result.metrics["holdout"]["mean_interval_width"]
    theirs = report_result.constant_band["mean_interval_width"]
    assert ours < theirs
    assert f"ours is {1 - ours / theirs:.1%} narrower" in rendered["report.md"].decode()


def test_pycaret_comparison_flags_a_different_split(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    assert "not comparable" not in rendered["report.md"].decode()
    other = dataclasses.replace(report_result, config=dataclasses.replace(report_result.config, seed=7))
    report = render(other, METADATA)["report.md"].decode()
    assert "0.876" in report
    assert "not comparable" in report


def test_render_is_deterministic(report_result: TrainResult, rendered: dict[str, bytes]) -> None:
    assert render(report_result, METADATA) == rendered


def test_missing_metadata_is_tolerated(report_result: TrainResult) -> None:
    files = render(report_result, {})
    report, card = files["report.md"].decode(), files["model_card.md"].decode()
    assert "(not recorded)" in report
    assert report_result.dataset.sha256 in card  # falls back to the dataset's own provenance


def test_a_group_without_holdout_rows_renders(report_result: TrainResult) -> None:
    """Small groups can be empty on the holdout; their NaN coverage must not break the report."""
    empty = [dict(g, rows=0, coverage=math.nan, mean_interval_width=math.nan) for g in report_result.by_group]
    files = render(dataclasses.replace(report_result, by_group=empty), METADATA)
    first = report_result.by_group[0]["group"]
    assert f"| {first} | 0 | – | – |" in files["report.md"].decode()
    assert files["plots/interval_coverage.png"].startswith(PNG_SIGNATURE)


def test_importing_the_module_stays_cheap() -> None:
    heavy = "{'matplotlib', 'sklearn', 'pandas'}"
    code = f"import sys, chargecast.report; print(sorted({heavy} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
