"""What ``chargecast predict --audit`` costs: batch scoring with and without the audit log, same run.

Scores one generated CSV into CSV without a log (the baseline), then with a fresh SQLite log
(and a file:// one), and prints rows/s for each beside the baseline. Prints figures; asserts nothing.

    PYTHONPATH=src .venv/bin/python bench/audit_bench.py [--rows 200000] [--model DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from batch_bench import DATA, make_records, quick_model
from chargecast.audit.runlog import RunLog
from chargecast.audit.store import open_store
from chargecast.batch import score_file
from chargecast.model.artifact import METADATA_FILE, Artifact, sha256_file


def timed(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", type=Path, help="artifact directory (default: train a quick one)")
    p.add_argument("--data", type=Path, default=DATA, help="training CSV for the quick model")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        model = Artifact.load(args.model) if args.model else quick_model(args.data, tmp / "model")
        digest = sha256_file(Path(model.path or tmp / "model") / METADATA_FILE)
        src = tmp / "patients.csv"
        make_records(args.rows, src)
        print(f"{args.rows:,} rows, median of {args.repeats} runs, each log fresh per run")
        runs = 0

        def logged(scheme: str) -> Callable[[], object]:
            def run() -> None:
                nonlocal runs
                runs += 1
                url = {"sqlite": f"sqlite:///{tmp}/log{runs}.sqlite3", "file": f"file://{tmp}/log{runs}"}[scheme]
                store = open_store(url)
                store.migrate()
                log = RunLog(store, model, digest)
                try:
                    score_file(src, tmp / "out.csv", model, audit=log)
                finally:
                    log.close()
                    store.close()

            return run

        results = {
            "predict, no audit log": timed(lambda: score_file(src, tmp / "out.csv", model), args.repeats),
            "predict --audit sqlite:///…": timed(logged("sqlite"), args.repeats),
            "predict --audit file:///…": timed(logged("file"), args.repeats),
        }
        baseline = results["predict, no audit log"]
        for name, seconds in results.items():
            rate = args.rows / seconds
            print(f"{name:<30} {seconds:6.2f} s {rate:>12,.0f} rows/s  {seconds / baseline:5.2f}x the time of no log")


if __name__ == "__main__":
    main()
