"""The ``chargecast`` command line: train, predict, serve.

Every user error ends in one clear message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargecast import __version__
from chargecast.argtypes import fraction, int_at_least, port
from chargecast.audit.cli import add_audit_parser
from chargecast.deploy.cli import add_deploy_parser
from chargecast.monitor.cli import add_monitor_parser
from chargecast.schema import FEATURES

if TYPE_CHECKING:  # the train extra (rich, scikit-learn) may be missing where the CLI runs
    from rich.table import Table

    from chargecast.training.train import TrainResult


class UserError(Exception):
    """An error whose message is the whole story for the user."""


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chargecast.model import artifact
    from chargecast.settings import get_settings
    from chargecast.training import train
    from chargecast.training.data import load_dataset

    console = Console(stderr=True)
    signer = _signer(args.sign)  # a bad key stops the run before minutes of training
    dataset = load_dataset(args.data, get_settings())
    console.print(f"data: {dataset.source} ({dataset.rows} rows, sha256 {dataset.sha256[:12]}…)")
    config = train.TrainConfig(
        seed=args.seed,
        test_size=args.test_size,
        folds=args.folds,
        repeats=args.repeats,
        level=args.level,
        exclude=tuple(args.exclude),
        splits=args.splits,
    )
    with Progress(
        TextColumn("cross-validating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("cv", total=None)

        def progress(total: int) -> Callable[[], None]:
            bar.update(task, total=total)
            return lambda: bar.advance(task)

        result = train.train(dataset, config, progress)

    out = Console(width=None if sys.stdout.isatty() else 120)
    out.print(_leaderboard(result))
    h = result.metrics["holdout"]
    out.print(
        f"holdout ({len(result.y_test)} rows, scored once): R² {h['r2']:.4f}  MAE {h['mae']:,.0f}  "
        f"RMSE {h['rmse']:,.0f}  coverage {h['coverage']:.3f}  mean width {h['mean_interval_width']:,.0f}  "
        f"total bias {h['total_bias']:+.2%}"
    )
    if result.splits:
        s = train.split_summary(result)
        out.print(
            f"over {len(result.splits)} random splits, same recipe: R² {s['r2']['mean']:.4f} ± {s['r2']['sd']:.4f}  "
            f"coverage {s['coverage']['mean']:.3f} ± {s['coverage']['sd']:.3f}  "
            f"Winkler {s['winkler']['mean']:,.0f} ± {s['winkler']['sd']:,.0f}"
        )
    meta = train.metadata(result)
    render = None
    try:
        from chargecast.training import report
    except ImportError:  # report needs the [train] extra's matplotlib
        console.print("[yellow]matplotlib missing: no report written[/]")
    else:

        def render(final: dict[str, Any]) -> dict[str, bytes]:
            return report.render(result, final)

    final = artifact.write(args.out, result.predictor, result.distribution, meta, render, signer)
    out.print(f"model {final['version']} written to {args.out} in {result.seconds:.1f} s")
    if args.sign is not None:
        out.print(f"signed with {args.sign}: {args.out / artifact.SIGNATURE_FILE}")
    return 0


def _leaderboard(result: TrainResult) -> Table:
    """The cross-validation leaderboard as a rich table, the chosen model ticked."""
    from rich.table import Table

    table = Table(title="Leaderboard (repeated K-fold CV on the training part)")
    for col in ("model", "CV R²", "CV MAE", "CV RMSE", "CV coverage", "mean width"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in result.leaderboard:
        mark = " ✓" if row["model"] == result.chosen else ""
        table.add_row(
            row["model"] + mark,
            f"{row['r2_mean']:.4f} ± {row['r2_std']:.4f}",
            f"{row['mae_mean']:,.0f}",
            f"{row['rmse_mean']:,.0f}",
            f"{row['coverage']:.3f}",
            f"{row['mean_interval_width']:,.0f}",
        )
    return table


def _signer(key_path: Path | None) -> Callable[[bytes], bytes] | None:
    """What signs metadata.json for ``train --sign``; the key is read and checked now."""
    if key_path is None:
        return None
    from chargecast import signing

    key = signing.private_key(key_path, "--sign")
    return lambda metadata: signing.signature_file(key, metadata)


def _sign(args: argparse.Namespace) -> int:
    from chargecast import signing

    key = signing.private_key(args.key, "--key")
    target, version = signing.sign(args.dir, key)
    print(f"model {version} in {args.dir} signed ({signing.fingerprint(key.public_key())}) -> {target}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from chargecast import signing
    from chargecast.audit.cli import run_log
    from chargecast.batch import score_file
    from chargecast.settings import get_settings

    settings = get_settings()
    # The signature first (CHARGECAST_MODEL_PUBLIC_KEY): nothing else of the model is read, and
    # nothing is written, audit store included, unless it holds.
    verified = signing.check(args.model or settings.model_dir, settings.model_public_key)
    model, log = run_log(verified.root, args.audit, verified.digest)
    output = args.output or args.input.with_name(f"{args.input.stem}.scored{args.input.suffix}")
    with (
        contextlib.closing(log),
        Progress(
            TextColumn("scoring"),
            BarColumn(),
            TextColumn("{task.completed:,} rows"),
            TimeElapsedColumn(),
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("rows", total=None)
        rows = score_file(
            args.input, output, model, progress=lambda n: bar.advance(task, n), summary=args.summary, audit=log.run
        )
    print(f"{rows:,} rows scored with model {model.version} -> {output}")
    if log.run is not None:
        print(f"{log.run.written:,} forecasts logged as request {log.run.request_id} -> audit log {log.where}")
    if args.summary is not None:
        print(f"book total and its {model.level:g} interval -> {args.summary}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from chargecast.serving.server import ServeError, serve
    from chargecast.settings import Settings

    given = {
        "model_dir": args.model,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "metrics_port": args.metrics_port,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    try:
        return serve(settings)
    except ServeError as exc:
        raise UserError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chargecast", description="Forecast medical charges at admission.")
    p.add_argument("--version", action="version", version=f"chargecast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="select, fit and save a model artifact")
    t.add_argument("--data", type=Path, help="training CSV (default: $CHARGECAST_DATA or the canonical download)")
    t.add_argument("--out", type=Path, default=Path("models/current"), help="artifact directory to write")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--test-size", type=fraction, default=0.2, help="holdout fraction (default 0.2)")
    t.add_argument("--folds", type=int_at_least(2), default=5)
    t.add_argument("--repeats", type=int_at_least(1), default=3)
    t.add_argument("--level", type=fraction, default=0.9, help="prediction interval level (default 0.9)")
    t.add_argument(
        "--exclude",
        action="append",
        default=[],
        choices=FEATURES,  # a misspelt input is an argparse error (exit 2), before any work
        metavar="FEATURE",
        help="train without this input (repeatable); the API still accepts and ignores it",
    )
    t.add_argument(
        "--splits",
        type=int_at_least(0),
        default=20,
        help="refit the chosen model on this many random splits (seeds 1..N) for the report's mean ± sd (default 20)",
    )
    t.add_argument(
        "--sign",
        type=Path,
        metavar="PRIVATE.pem",
        help="sign metadata.json with this Ed25519 key (openssl genpkey -algorithm ed25519); see docs/signing.md",
    )
    t.set_defaults(func=_train)

    sg = sub.add_parser("sign", help="sign an existing model artifact's metadata.json (Ed25519)")
    sg.add_argument("dir", type=Path, metavar="DIR", help="the artifact directory, such as models/current")
    sg.add_argument("--key", type=Path, required=True, metavar="PRIVATE.pem", help="Ed25519 private key (PEM)")
    sg.set_defaults(func=_sign)

    pr = sub.add_parser("predict", help="score a CSV or Parquet file in streamed chunks")
    pr.add_argument("input", type=Path)
    pr.add_argument("-o", "--output", type=Path, help="output file (default: INPUT.scored.EXT)")
    pr.add_argument("--model", type=Path, help="artifact directory (default: $CHARGECAST_MODEL_DIR)")
    pr.add_argument(
        "--summary",
        type=Path,
        metavar="PATH.json",
        help="also write the row count and the book's total charges with its interval as JSON "
        "(the same numbers as POST /api/v1/predict/csv/summary); written only if scoring succeeds",
    )
    pr.add_argument(
        "--audit",
        metavar="URL",
        help="log every forecast to this audit log (sqlite:///…, postgresql://…, file:///…; default: "
        "$CHARGECAST_AUDIT_URL; off: none), only if scoring succeeds",
    )
    pr.set_defaults(func=_predict)

    s = sub.add_parser("serve", help="run the web service (settings also from CHARGECAST_* variables)")
    s.add_argument("--model", type=Path, help="artifact directory (default: $CHARGECAST_MODEL_DIR or models/current)")
    s.add_argument("--host", help="address to listen on (default: $CHARGECAST_HOST or 127.0.0.1)")
    s.add_argument("--port", type=port, help="port (default: $CHARGECAST_PORT or 8080)")
    s.add_argument("--workers", type=int_at_least(1), help="worker processes (default: $CHARGECAST_WORKERS or 2)")
    s.add_argument(
        "--metrics-port",
        type=port,
        help="port for /metrics, apart from the public one; 0 = none (default: $CHARGECAST_METRICS_PORT or 9090)",
    )
    s.set_defaults(func=_serve)
    add_deploy_parser(sub)
    add_audit_parser(sub)
    add_monitor_parser(sub)
    return p


def expected_errors() -> tuple[type[Exception], ...]:
    """The failures that are the user's to fix (input, files, settings, artifacts, tools).

    Anything else is a bug: it is not caught, so its traceback shows (exit 1), instead of
    passing for a user error in one line with exit 2.
    """
    from pydantic import ValidationError as SettingsError

    from chargecast.deploy.runner import DeployError
    from chargecast.model.artifact import ArtifactError
    from chargecast.schema import ValidationError
    from chargecast.serving.server import ServeError
    from chargecast.signing import SigningError

    known: tuple[type[Exception], ...] = (
        UserError,
        SigningError,
        ArtifactError,
        ValidationError,
        SettingsError,
        ServeError,
        DeployError,
    )
    with contextlib.suppress(ImportError):  # the train and batch extras may be missing
        from chargecast.training.data import DataError

        known = (*known, DataError)
    from chargecast.audit.cli import AuditError
    from chargecast.audit.runlog import RunLogError
    from chargecast.batch import BatchError
    from chargecast.monitor.cli import MonitorError

    return (*known, BatchError, AuditError, RunLogError, MonitorError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; maps every expected failure to a one-line message and exit code 2."""
    from chargecast.schema import ValidationError

    args = parser().parse_args(argv)
    known = expected_errors()
    if args.command == "audit":
        args.command = f"audit {args.audit_command}"
    elif args.command == "monitor":
        args.command = f"monitor {args.task}"
    try:
        code: int = args.func(args)
        return code
    except ValidationError as exc:
        print(f"chargecast {args.command}: invalid input:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        if exc.truncated:
            print(f"  ... {exc.total - len(exc.issues)} more problems", file=sys.stderr)
        return 2
    except known as exc:
        print(f"chargecast {args.command}: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _describe(exc: Exception) -> str:
    """One line; a bad setting is named by the environment variable a user would fix."""
    errors = getattr(exc, "errors", None)
    if type(exc).__module__.startswith("pydantic") and callable(errors):
        parts = []
        for error in errors():
            name = "CHARGECAST_" + "_".join(str(p) for p in error["loc"]).upper()
            secret = "KEY" in name or name == "CHARGECAST_AUDIT_URL" or not error["loc"]  # may hold a password
            parts.append(f"setting {name}: {error['msg']}" + ("" if secret else f" (got {error.get('input')!r})"))
        return "; ".join(parts)
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
