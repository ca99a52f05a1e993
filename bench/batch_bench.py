"""Batch scoring throughput, end to end, against plain pandas I/O of the same file.

The pandas round trip (read_csv + to_csv, no model) is measured in the same run, so the
ratio stays meaningful on a busy or slower machine. Prints figures; asserts nothing.

    PYTHONPATH=src .venv/bin/python bench/batch_bench.py [--rows 2000000] [--model DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from chargecast.batch import score_file
from chargecast.model import artifact as artifact_module
from chargecast.model.artifact import Artifact
from chargecast.schema import FEATURES, FIELDS, CategoryField, encode_columns

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "insurance.csv"


def make_records(n: int, path: Path, seed: int = 0) -> None:
    """Random valid patients over the schema's accepted ranges, written as a plain CSV."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for spec in FIELDS:
        if isinstance(spec, CategoryField):
            columns[spec.name] = np.asarray(spec.choices)[rng.integers(0, len(spec.choices), n)]
        elif spec.integer:
            columns[spec.name] = rng.integers(int(spec.minimum), int(spec.maximum) + 1, n)
        else:
            columns[spec.name] = np.round(rng.uniform(spec.minimum, spec.maximum, n), 2)
    pd.DataFrame(columns).to_csv(path, index=False)


def quick_model(data: Path, out: Path) -> Artifact:
    """Train a model as the tests do (one CV repeat), for when no --model is given."""
    if importlib.util.find_spec("chargecast.training.data") is None:  # written on another branch
        stub = types.ModuleType("chargecast.training.data")
        stub.__dict__["Dataset"] = object
        sys.modules["chargecast.training.data"] = stub
    from chargecast.training.train import TrainConfig, train

    df = pd.read_csv(data)
    X = encode_columns({c: df[c].to_numpy() for c in FEATURES})
    ds = types.SimpleNamespace(X=X, y=df["charges"].to_numpy(), rows=len(df), sha256="x", source="x")
    result = train(ds, TrainConfig(repeats=1, splits=0))  # type: ignore[arg-type, unused-ignore]
    artifact_module.write(out, result.predictor, result.distribution, {"model": result.chosen})
    return Artifact.load(out)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=262_144)
    p.add_argument("--model", type=Path, help="artifact directory (default: train a quick one)")
    p.add_argument("--data", type=Path, default=DATA, help="training CSV for the quick model")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        model = Artifact.load(args.model) if args.model else quick_model(args.data, tmp / "model")
        src = tmp / "patients.csv"
        make_records(args.rows, src)
        size = src.stat().st_size / 2**20
        print(f"{args.rows:,} rows, {size:.0f} MiB CSV, model {model.metadata.get('model', '?')}")
        print(f"median of {args.repeats} runs, chunk_rows={args.chunk_rows:,}")

        def score(dest: Path) -> Callable[[], object]:
            return lambda: score_file(src, dest, model, chunk_rows=args.chunk_rows)

        def pandas_io() -> None:
            pd.read_csv(src).to_csv(tmp / "pandas.csv", index=False)

        results = {
            "score_file CSV -> CSV": median_seconds(score(tmp / "out.csv"), args.repeats),
            "score_file CSV -> Parquet": median_seconds(score(tmp / "out.parquet"), args.repeats),
            "pandas read_csv + to_csv (no model)": median_seconds(pandas_io, args.repeats),
        }
        baseline = results["pandas read_csv + to_csv (no model)"]
        for name, seconds in results.items():
            rate = args.rows / seconds
            print(f"{name:<38} {seconds:6.2f} s {rate:>12,.0f} rows/s  {baseline / seconds:4.2f}x pandas I/O")


if __name__ == "__main__":
    main()
