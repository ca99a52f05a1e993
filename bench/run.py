"""Print issue #2's and issue #7's figures beside same-run baselines.

Issue #2: quality, train time, latency, throughput. Issue #7: the interval targets table
(see ``intervals.py``) over 20 random splits and the fixed one, against four baselines.
Run: ``make bench`` (or ``.venv/bin/python bench/run.py [--data PATH]``). Nothing here is
asserted; the numbers go into the README and the issue notes. Timings are medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from chargecast.model.artifact import Artifact, write
from chargecast.model.features import design, domain_terms
from chargecast.schema import FEATURES, encode_columns
from chargecast.training.data import load_csv
from chargecast.training.train import TrainConfig, TrainResult, metadata, train
from intervals import (
    OldBands,
    SplitFigures,
    evaluate,
    evaluate_seed,
    print_group_tails,
    print_quality,
    print_splits,
    print_table,
    timings,
)

ROOT = Path(__file__).resolve().parents[1]
# Reported in issue #2 for PyCaret on the same seed-42 80/20 split (not re-run here: PyCaret is not installed).
PYCARET_BEST = {"r2": 0.876, "mae": 2481, "cv_r2": 0.839}
# Issue #2's interval targets (coverage in [0.86, 0.94], narrower than a constant band) are withdrawn:
# issue #7's table below replaces them.
TARGETS = "R² >= 0.88, RMSE <= 4300, MAE <= 2350, |bias| <= 2%"


def median_time(fn: Callable[[], Any], repeat: int = 7, number: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def quality(result: TrainResult) -> None:
    h, cv = result.metrics["holdout"], result.metrics["cv"]
    print(f"chosen model: {result.chosen}  (targets: {TARGETS})")
    print(
        f"  holdout R² {h['r2']:.4f}  RMSE {h['rmse']:,.0f}  MAE {h['mae']:,.0f}  total bias {h['total_bias']:+.2%}  "
        f"coverage {h['coverage']:.3f}  mean width {h['mean_interval_width']:,.0f}"
    )
    print(f"  CV R² {cv['r2_mean']:.4f} ± {cv['r2_std']:.4f}  CV coverage {cv['coverage']:.3f}")
    print(f"  PyCaret best (reported, same split): R² {PYCARET_BEST['r2']}  MAE {PYCARET_BEST['mae']:,}  CV R² 0.839")
    print("  interval by calibration group on this holdout (issue #7's table below has the targets):")
    for g in result.by_group:
        print(
            f"    {g['group']:<22} rows {g['rows']:>3}  coverage {g['coverage']:.3f}  below {g['below']:.1%}  "
            f"above {g['above']:.1%}  width {g['mean_interval_width']:,.0f}"
        )
    if result.exclusion:
        ex = result.exclusion
        print(
            f"  without sex: CV R² {ex['cv']['r2_mean']:.4f} (vs {cv['r2_mean']:.4f}), "
            f"holdout R² {ex['holdout']['r2']:.4f} (vs {h['r2']:.4f}), MAE {ex['holdout']['mae']:,.0f}"
        )


def speed(result: TrainResult, data_path: Path, old: OldBands) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "m", result.predictor, result.distribution, metadata(result))
        model = Artifact.load(Path(tmp) / "m")
    record = {"age": 52, "sex": "male", "bmi": 34.1, "children": 2, "smoker": "yes", "region": "northwest"}
    one = median_time(lambda: model.predict_record(record), repeat=9, number=20000)
    df = pd.read_csv(data_path)
    terms = domain_terms()

    def to_design(frame: pd.DataFrame) -> np.ndarray:
        return design(terms, encode_columns({c: frame[c].to_numpy() for c in FEATURES}))

    pipe = make_pipeline(FunctionTransformer(to_design), LinearRegression()).fit(df, df.charges)
    row_df = pd.DataFrame([record])
    sk_one = median_time(lambda: pipe.predict(row_df), repeat=7, number=200)
    X = encode_columns({c: df[c].to_numpy() for c in FEATURES})
    gbm = GradientBoostingRegressor(n_estimators=300, max_depth=2, learning_rate=0.05, random_state=0).fit(
        X, df.charges
    )
    gbm_one = median_time(lambda: gbm.predict(X[:1]), repeat=7, number=200)
    print(f"one record + interval: {one * 1e6:.1f} µs median (target <= 50 µs)")
    print(
        f"  baselines this run: sklearn pipeline on a one-row DataFrame {sk_one * 1e6:,.0f} µs "
        f"({sk_one / one:,.0f}x slower); encoded array into a fitted GradientBoostingRegressor "
        f"{gbm_one * 1e6:,.0f} µs ({gbm_one / one:,.0f}x slower)"
    )
    big = np.repeat(X, 1_000_000 // len(X) + 1, axis=0)[:1_000_000]
    batch = median_time(lambda: model.predict(big), repeat=5)
    big_df = pd.concat([df] * (1_000_000 // len(df) + 1)).iloc[:1_000_000]
    sk_batch = median_time(lambda: pipe.predict(big_df), repeat=3)
    print(
        f"batch of 1,000,000 encoded rows with intervals: {1e6 / batch:,.0f} rows/s (target >= 1,000,000); "
        f"sklearn pipeline on a DataFrame: {1e6 / sk_batch:,.0f} rows/s"
    )
    timings(model, old, X, median_time)


def train_wall(data_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "chargecast.cli", "train", "--data", str(data_path), "--out", f"{tmp}/m"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        print(f"whole `chargecast train` wall time: {wall:.1f} s (target <= 30 s; PyCaret's compare_models: 70 s)")


def interval_table(data: Any, result: TrainResult, data_path: Path, seeds: list[int], repeats: int) -> OldBands:
    """Issue #7's table; the random splits run two at a time while the fixed one is scored here."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(evaluate_seed, data_path, seed, repeats) for seed in seeds]
        fixed = evaluate(data, result)
        splits: list[SplitFigures] = [job.result() for job in jobs]
    print()
    print(
        f"issue #7 (honest uncertainty), {time.perf_counter() - start:.0f} s: train() on the {len(seeds)} random "
        f"splits uses repeats={repeats} (model choice by {repeats}x 5-fold CV, to keep `make bench` short), the "
        f"fixed split the default repeats={result.config.repeats}; with linear_domain chosen our interval does not "
        "depend on it (exact leave-one-out residuals). Baselines use 5-fold x 3-repeat OOF residuals of the "
        "same model (equal-tailed jackknife: the refit's leave-one-out residuals); CQR uses boosted 5%/95% "
        "quantiles (100 trees, depth 2) conformalized on 5-fold OOF scores, then refit on all training rows."
    )
    print_table(splits, fixed)
    print_group_tails(splits, fixed)
    print_quality(splits, fixed)
    print_splits(splits)
    return fixed.old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "insurance.csv")
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(1, 21)), help="random splits for issue #7")
    ap.add_argument("--repeats", type=int, default=1, help="train() CV repeats on those splits")
    args = ap.parse_args()
    data = load_csv(args.data)
    result = train(data, TrainConfig())
    quality(result)
    old = interval_table(data, result, args.data, args.seeds, args.repeats)
    print()
    speed(result, args.data, old)
    train_wall(args.data)


if __name__ == "__main__":
    main()
