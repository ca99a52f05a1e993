"""``chargecast serve``: uvicorn with N worker processes, graceful on SIGTERM.

Two steps in one process. :func:`serve` validates the settings (pydantic), checks the model
directory (a wrong path fails here with one clear message instead of crash-looping every
worker) and exports the effective settings as ``CHARGECAST_*``; then it ``exec``s
``python -m chargecast.server``, a lean supervisor that never imports pydantic or numpy:
it stays resident for the server's life, and the memory budget is for the whole tree.
Same pid, so signals and exit codes reach whoever started ``chargecast serve``.

The supervisor (:func:`supervise`) creates a fresh prometheus multiprocess directory
before any worker exists, runs uvicorn, and removes the directory once every worker has
exited. On SIGTERM uvicorn stops accepting, lets in-flight requests finish for
``shutdown_timeout`` seconds (default 8, so the server is gone within 10), then exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the supervisor must not import pydantic: it stays resident
    from chargecast.settings import Settings

APP = "chargecast.app:create_app"
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
)


class ServeError(Exception):
    """The service cannot start; the message says why."""


def check_model(model_dir: Path) -> str:
    """Cheap, numpy-free check that ``model_dir`` holds an artifact; returns its version.

    Workers verify hashes and versions when they load it; this only keeps a wrong path
    from becoming a crash loop of workers.
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
        environ[f"CHARGECAST_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    if settings.api_keys:
        environ["CHARGECAST_API_KEYS"] = ",".join(k.get_secret_value() for k in settings.api_keys)


def serve(settings: Settings) -> NoReturn:
    """Validate, export, and replace this process with the lean supervisor."""
    check_model(settings.model_dir)
    settings = settings.model_copy(update={"model_dir": Path(settings.model_dir).resolve()})
    env = dict(os.environ)
    export_settings(settings, env)
    package_root = str(Path(__file__).resolve().parents[1])  # so `-m chargecast.server` resolves as here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "chargecast.server"], env)


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def supervise(environ: MutableMapping[str, str] = os.environ) -> int:
    """Run uvicorn from the exported ``CHARGECAST_*`` values until SIGTERM or SIGINT."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from chargecast.logs import uvicorn_log_config

    class _Supervisor(Multiprocess):
        """uvicorn's supervisor, but it lets go of the listening socket as soon as it is told to stop.

        The workers close their copies on SIGTERM; without this the parent's copy would keep
        the port open and new connections would queue unanswered until the process exits,
        instead of being refused at once (so a client or load balancer retries elsewhere).
        """

        def _release(self) -> None:
            for sock in self.sockets:
                sock.close()

        def handle_term(self) -> None:
            self._release()
            super().handle_term()

        def handle_int(self) -> None:
            self._release()
            super().handle_int()

    workers = int(environ["CHARGECAST_WORKERS"])
    level = environ["CHARGECAST_LOG_LEVEL"]
    metrics_dir = tempfile.mkdtemp(prefix="chargecast-metrics-")
    environ[MULTIPROC_ENV] = metrics_dir  # before any worker is spawned: they inherit it
    # The model's matrix products are tiny: one BLAS thread per worker starts faster and uses less memory.
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
            server_header=False,
            lifespan="on",
        )
        if workers > 1:
            sock = config.bind_socket()
            _Supervisor(config, sockets=[sock]).run()
            return 0
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal that stopped it once it has shut down gracefully;
        # turn that into a normal exit so the finally below still cleans up.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_quietly)
        server.run()
        return 0 if server.started else 1
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    missing = [k for k in ("CHARGECAST_WORKERS", "CHARGECAST_HOST", "CHARGECAST_PORT") if k not in os.environ]
    if missing:
        sys.exit("python -m chargecast.server is started by `chargecast serve`; run that instead")
    sys.exit(supervise())
