"""``chargecast monitor drift`` and ``chargecast monitor performance``.

The audit log is named as for ``chargecast audit``: ``--audit URL``, else
``CHARGECAST_AUDIT_URL``. Exit codes: 0 all within thresholds (or the report was written),
1 drift crossed a threshold, 2 bad input (dates, thresholds, an empty window, a model
without reference, an audit log that cannot be opened).
"""

from __future__ import annotations

import argparse
import math
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargecast.argtypes import moment


class MonitorError(Exception):
    """A monitoring command's user error: the message is the whole story."""


NO_REFERENCE = "this model has no training reference; retrain it (chargecast train) to monitor drift"


def _open(url: str | None) -> Any:
    """The audit store, migrated, closed when the ``with`` ends (``chargecast audit``'s rules)."""
    from chargecast.audit.cli import chosen_url, connect

    return closing(connect(chosen_url(url)))


def _span(args: argparse.Namespace) -> str:
    if args.since and args.until and args.since >= args.until:
        raise MonitorError(f"--since {args.since.isoformat()} must be before --until {args.until.isoformat()}")
    since = args.since.isoformat() if args.since else "the first record"
    return f"{since} to {args.until.isoformat() if args.until else 'now'}"


def _write(out: Path, write: Any) -> Path:
    """A report, or one line on why its directory cannot take it."""
    try:
        path: Path = write()
    except OSError as exc:
        raise MonitorError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None
    return path


def _drift(args: argparse.Namespace) -> int:
    from chargecast.model.artifact import Artifact
    from chargecast.monitor import drift, report
    from chargecast.settings import get_settings

    settings = get_settings()
    try:
        thresholds = drift.parse_thresholds(drift.split_thresholds(settings.drift_thresholds))
        thresholds |= drift.parse_thresholds(args.threshold)
    except ValueError as exc:
        raise MonitorError(f"--threshold: {exc}") from None
    span = _span(args)
    model = Artifact.load(args.model or settings.model_dir)
    if model.reference is None:
        raise MonitorError(f"model {model.version}: {NO_REFERENCE}")
    with _open(args.audit) as store:
        window = drift.window_from_inputs(f.inputs for f in store.forecasts(args.since, args.until))
    if not window.rows:
        raise MonitorError(f"no logged forecasts from {span}: the window is empty")
    scores = drift.scores(model.reference, window, thresholds)
    heading = {"window": span, "model": model.version}
    path = _write(args.out, lambda: report.drift_report(args.out, model.reference, window, scores, heading))
    for s in scores:
        state = "FLAGGED" if s.flagged else "ok"
        print(f"{s.feature:<9} {s.statistic:<15} {s.value:8.4f}  threshold {s.threshold:<6g} {state}")
    flagged = drift.flagged(scores)
    if window.rows < drift.MIN_RECORDS:
        print(f"warning: only {window.rows:,} records; below {drift.MIN_RECORDS:,} noise can cross thresholds")
    print(f"drift in {', '.join(flagged)}" if flagged else "no drift", f"({window.rows:,} records) -> {path}")
    return 1 if flagged else 0


def _performance(args: argparse.Namespace) -> int:
    from chargecast.monitor import actuals, performance, report
    from chargecast.settings import get_settings

    span = _span(args)
    if args.actuals is not None and not args.actuals.is_file():
        raise MonitorError(f"--actuals {args.actuals}: no such file")
    try:
        key = get_settings().patient_key()  # the variable or its file, as the service reads it
    except ValueError as exc:
        raise MonitorError(str(exc)) from None
    with _open(args.audit) as store:
        if args.actuals is not None:
            claims = actuals.load_file(args.actuals)
            added, known = actuals.record(store, claims, key, datetime.now(UTC))
            print(f"actuals from {args.actuals}: {added:,} added, {known:,} already known")
        realised = performance.collect(store.realised(args.since, args.until))
    if not len(realised):
        raise MonitorError(f"no forecasts with actual charges from {span}")
    tables = performance.breakdown(realised)
    path = _write(args.out, lambda: report.performance_report(args.out, tables, {"window": span}))
    f = tables["overall"][0][1]
    bias = "–" if math.isnan(f.bias) else f"{f.bias:+.2%}"
    print(
        f"{f.records:,} realised forecasts: MAE {f.mae:,.0f}  total bias {bias}  coverage {f.coverage:.1%} "
        f"(nominal {f.level:.0%}; below {f.below:.1%}, above {f.above:.1%}) -> {path}"
    )
    return 0


def add_monitor_parser(sub: Any) -> None:
    m = sub.add_parser("monitor", help="drift of logged inputs, and realised performance once actuals arrive")
    tasks = m.add_subparsers(dest="task", required=True)
    for name, func, text in (
        ("drift", _drift, "compare logged inputs with the model's training reference (exit 1 on drift)"),
        ("performance", _performance, "MAE, bias and interval coverage of forecasts with actual charges"),
    ):
        t = tasks.add_parser(name, help=text)
        t.add_argument("--audit", metavar="URL", help="the audit store (default: $CHARGECAST_AUDIT_URL)")
        t.add_argument("--since", type=moment, help="first forecast time, inclusive (ISO 8601; UTC if no zone)")
        t.add_argument("--until", type=moment, help="end of the window, exclusive")
        t.add_argument("--out", type=Path, default=Path(f"reports/{name}"), help=f"report directory (reports/{name})")
        t.set_defaults(func=func)
        if name == "drift":
            t.add_argument("--model", type=Path, help="artifact (default: $CHARGECAST_MODEL_DIR or models/current)")
            t.add_argument(
                "--threshold",
                action="append",
                default=[],
                metavar="F=V",
                help="threshold for a feature's main statistic, or F.STATISTIC=V (repeatable)",
            )
        else:
            t.add_argument(
                "--actuals",
                type=Path,
                metavar="FILE",
                help="CSV or JSON Lines of request_id,row,charges or patient_ref,charges, stored first",
            )
