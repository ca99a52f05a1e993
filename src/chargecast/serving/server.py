"""``chargecast serve``: uvicorn with N worker processes, graceful on SIGTERM.

Two steps in one process. :func:`serve` validates the settings (pydantic), then loads and
verifies the model ONCE (hashes, metadata, versions, a self-check): a broken artifact ends
the process here, non-zero with one line, before anything listens. The verified bytes are
copied into a private (0700) temporary directory and workers load only that copy, checked
against metadata.json's sha256 (``CHARGECAST_MODEL_SHA256``), so a worker restarted later
serves exactly the version verified at start, whatever happened to the files on disk since.
Then it ``exec``s ``python -m chargecast.serving.server``, a lean supervisor that never imports
pydantic or numpy: it stays resident for the server's life, and the memory budget is for
the whole tree. Same pid, so signals and exit codes reach whoever started ``chargecast serve``.

The supervisor (:func:`supervise`, parts in :mod:`chargecast.serving.supervisor`) creates a fresh
prometheus multiprocess directory before any worker exists, serves ``/metrics`` on its own
port (``CHARGECAST_METRICS_PORT``, 0 = none), runs the workers, and removes the directory and
the model copy once every worker has exited. On SIGTERM workers stop accepting, let in-flight
requests finish and their bytes reach the clients for ``shutdown_timeout`` seconds (default 8,
so the server is gone within 10), then exit.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from chargecast.serving.guard import HttpLimits

if TYPE_CHECKING:  # the supervisor must not import pydantic: it stays resident
    from chargecast.settings import Settings

APP = "chargecast.serving.app:create_app"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_EXPORTED = (
    "model_dir",
    "host",
    "port",
    "workers",
    "max_body_bytes",
    "csv_max_bytes",
    "csv_max_rows",
    "csv_upload_timeout",
    "form_requires_key",
    "log_level",
    "shutdown_timeout",
    "keepalive_seconds",
    "metrics_port",
    "model_sha256",
    "model_public_key",
    "iap_audience",
    "iap_jwks",
    "worker_memory_budget",
    *HttpLimits.ENV,
)
SNAPSHOT_ENV = "CHARGECAST_SNAPSHOT_DIR"  # the model copy the supervisor removes at exit


class ServeError(Exception):
    """The service cannot start; the message says why."""


def check_model(model_dir: Path) -> str:
    """Cheap, numpy-free check that ``model_dir`` holds an artifact; returns its version.

    Runs before the full verification in :func:`serve` so a wrong path gets the plain
    "not found" message before numpy is imported.
    """
    meta = Path(model_dir) / "metadata.json"
    if not meta.is_file():
        raise ServeError(f"{meta}: not found (is {model_dir} a chargecast model directory? run `chargecast train`)")
    try:
        version = json.loads(meta.read_text(encoding="utf-8"))["version"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ServeError(f"{meta}: unreadable model metadata ({exc})") from None
    return str(version)


def export_settings(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Write the effective settings where spawned workers (and the supervisor) read them."""
    for name in _EXPORTED:
        value = getattr(settings, name)
        if value is None:
            continue
        environ[f"CHARGECAST_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    if settings.api_keys:
        environ["CHARGECAST_API_KEYS"] = ",".join(k.get_secret_value() for k in settings.api_keys)


def serve(settings: Settings) -> NoReturn:
    """Validate, verify the model once, snapshot it, export, and become the lean supervisor."""
    from chargecast import signing
    from chargecast.model.artifact import SIGNATURE_FILE, load_verified, snapshot
    from chargecast.serving.iap import JwksError, check_source

    check_model(settings.model_dir)
    if settings.metrics_port and settings.metrics_port == settings.port:
        raise ServeError(f"the metrics port {settings.metrics_port} must differ from the service port")
    if settings.iap_audience is not None:
        try:
            check_source(settings.iap_jwks)  # a broken JWKS file stops the start, not every request
        except JwksError as exc:
            raise ServeError(str(exc)) from None
    # With CHARGECAST_MODEL_PUBLIC_KEY: the signature before anything else of the model is read.
    verified = signing.check(settings.model_dir, settings.model_public_key, settings.model_sha256)
    source = verified.root.resolve()
    model, contents = load_verified(source, verified.digest)  # ArtifactError: one line, exit 2
    del model  # built and self-checked: the workers build their own from the snapshot
    if verified.signature is not None:  # the workers check it again, in the copy
        contents[SIGNATURE_FILE] = verified.signature
    snap = Path(tempfile.mkdtemp(prefix="chargecast-model-"))  # 0700: only this user reads or swaps it
    try:
        digest = snapshot(contents, snap)
        del contents
        settings = settings.model_copy(update={"model_dir": snap, "model_sha256": digest})
        env = dict(os.environ)
        export_settings(settings, env)
        env[SNAPSHOT_ENV] = str(snap)
        env["CHARGECAST_MODEL_SOURCE"] = str(source)
        package_root = str(Path(__file__).resolve().parents[1])  # so `-m chargecast.serving.server` resolves as here
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "chargecast.serving.server"], env)
    except BaseException:
        shutil.rmtree(snap, ignore_errors=True)
        raise


def supervise(environ: MutableMapping[str, str] = os.environ) -> int:
    """Run the workers from the exported ``CHARGECAST_*`` values until SIGTERM or SIGINT."""
    import logging

    import uvicorn

    from chargecast.jsonlog import uvicorn_log_config
    from chargecast.serving.guard import GuardedHttpProtocol
    from chargecast.serving.supervisor import Supervisor, metrics_server

    workers = int(environ["CHARGECAST_WORKERS"])
    level = environ["CHARGECAST_LOG_LEVEL"]
    snapshot_dir = environ.pop(SNAPSHOT_ENV, None)
    metrics_dir = tempfile.mkdtemp(prefix="chargecast-metrics-")
    environ[MULTIPROC_ENV] = metrics_dir  # before any worker is spawned: they inherit it
    # The model's matrix products are tiny: one BLAS thread per worker starts faster and uses less memory.
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # glibc keeps freed memory per thread arena and raises its mmap threshold after each large
    # free, so a worker that once scored a big CSV in a thread kept its peak for ever. Two arenas
    # and a fixed threshold hand large blocks back to the kernel: the budget then bounds RSS.
    environ.setdefault("MALLOC_ARENA_MAX", "2")
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 << 10))
    environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 20))
    metrics = None
    try:
        config = uvicorn.Config(
            APP,
            factory=True,
            host=environ["CHARGECAST_HOST"],
            port=int(environ["CHARGECAST_PORT"]),
            workers=workers,
            log_config=uvicorn_log_config(level),
            log_level=level,
            access_log=False,  # the app writes its own JSON access line
            timeout_graceful_shutdown=int(environ["CHARGECAST_SHUTDOWN_TIMEOUT"]),
            timeout_keep_alive=int(environ["CHARGECAST_KEEPALIVE_SECONDS"]),
            server_header=False,
            # Nothing here uses the client's address (no limit is per address: behind a load
            # balancer many clients share one), so X-Forwarded-* rewriting would be pure cost.
            proxy_headers=False,
            lifespan="on",
            http=GuardedHttpProtocol,  # header, body and send limits; SIGTERM waits for slow clients
        )
        log = logging.getLogger("chargecast.serving.server")
        metrics_port = int(environ.get("CHARGECAST_METRICS_PORT", "0"))
        if metrics_port:
            try:
                metrics = metrics_server(config.host, metrics_port, metrics_dir)
            except OSError as exc:
                print(f"chargecast serve: cannot serve metrics on port {metrics_port}: {exc}", file=sys.stderr)
                return 2
        log.info(
            "serving the verified model",
            extra={
                "fields": {
                    "model_sha256": environ.get("CHARGECAST_MODEL_SHA256"),
                    "model_source": environ.get("CHARGECAST_MODEL_SOURCE"),
                    "metrics_port": metrics_port or None,
                }
            },
        )
        # Always a separate supervisor, even for one worker: it stays lean, restarts a dead
        # worker, and owns the metrics port.
        supervisor = Supervisor(config, [config.bind_socket()], metrics_dir)
        supervisor.run()
        return supervisor.exit_code
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if snapshot_dir:
            shutil.rmtree(snapshot_dir, ignore_errors=True)


if __name__ == "__main__":
    missing = [k for k in ("CHARGECAST_WORKERS", "CHARGECAST_HOST", "CHARGECAST_PORT") if k not in os.environ]
    if missing:
        sys.exit("python -m chargecast.serving.server is started by `chargecast serve`; run that instead")
    sys.exit(supervise())
