"""One worker's state, and the one check every route that forecasts must pass.

The model loads in the background after start-up, so ``/healthz`` answers at once and
``/readyz`` says 503 until the model is loaded and a warm-up prediction succeeded.
:meth:`Service.admit` is where the API key and the model's readiness are checked; the
routes reach it through :class:`chargecast.serving.routes.Gate`, never on their own.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
from starlette.types import Scope

from chargecast import signing
from chargecast.model.artifact import METADATA_FILE, Artifact
from chargecast.schema import Issue
from chargecast.serving import headers as security
from chargecast.serving import openapi
from chargecast.serving.actuals import Monitoring
from chargecast.serving.audit import CALLER, Audit
from chargecast.serving.budget import MemoryBudget
from chargecast.serving.errors import ApiError
from chargecast.serving.iap import Iap, Jwks
from chargecast.serving.logs import AccessLog
from chargecast.serving.metrics import Metrics
from chargecast.serving.predict import model_info, warm_up
from chargecast.serving.request import check_bearer
from chargecast.serving.transport import header
from chargecast.settings import Settings

log = logging.getLogger("chargecast.serving.app")  # one name for what a worker logs, whichever module
MODEL_FAILED_EXIT: Final = 3  # uvicorn's STARTUP_FAILURE: the supervisor stops rather than restarts
MODEL_WAIT_SECONDS = 5.0  # how long a request waits for a model that is still loading
CSV_SLOTS: Final = 2  # concurrent CSV jobs per worker: each holds its upload in memory


class Service:
    """One worker's state: settings, the model once loaded, metrics, access log, documents."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Artifact | None = None
        self.model_info: bytes = b"{}"
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.access = AccessLog(settings.log_level)
        keyring = settings.keyring()
        self.keys = tuple(key for _, key in keyring)
        self.key_labels = tuple(label for label, _ in keyring)
        self.audit = Audit(settings) if settings.audit_on else None
        self.iap = Iap(settings.iap_audience, Jwks(settings.iap_jwks)) if settings.iap_audience else None
        self.document = openapi.build(settings)
        self.openapi_json = openapi.to_json(self.document)
        self.docs_html = openapi.render_docs(self.document)
        self.docs_headers = security.page_headers(self.docs_html)
        self.csv_slots = anyio.Semaphore(CSV_SLOTS)
        self.budget = MemoryBudget(settings.worker_memory_budget)
        self.monitoring = Monitoring(settings)  # actual charges, and the drift and coverage gauges
        self._loaded = asyncio.Event()  # set when loading ends, either way

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    async def admit(self, scope: Scope) -> Artifact:
        """The model for a request that may use it: the API key first, then the model.

        The key comes first so that its refusal shows nothing of the model, not even
        whether it is loaded. A model still loading is waited for (see :meth:`wait_for_model`).
        """
        if self.keys:
            label = self.key_labels[check_bearer(header(scope, b"authorization"), self.keys)]
            scope.setdefault(CALLER, label)  # behind IAP the caller is the person IAP verified
        return self.model or await self.wait_for_model()

    async def flush_forever(self) -> None:
        """Write metric tallies and pending access-log lines out a few times a second."""
        while True:
            await asyncio.sleep(self.metrics.FLUSH_SECONDS)
            if self.audit is not None:
                self.metrics.audit(self.audit.writer)
            self.metrics.flush()
            self.access.flush()

    async def wait_for_model(self) -> Artifact:
        """The model, waiting up to ``MODEL_WAIT_SECONDS`` if it is still loading.

        Each worker loads on its own; /readyz may already be 200 (answered by a worker that
        is done) while this one is still loading, so a request that races the load waits
        the few milliseconds it takes rather than getting a 503.
        """
        if self.model is None and self.load_error is None:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), MODEL_WAIT_SECONDS)
        return self.require_model()

    def require_model(self) -> Artifact:
        if self.model is None:
            # The detail (paths, hashes) is for the server log, not for whoever asks.
            reason = "the model failed to load or verify" if self.load_error else "model is still loading"
            raise ApiError(503, f"not ready: {reason}", [Issue("model", "is not loaded")], {"Retry-After": "1"})
        return self.model

    def _load_and_warm(self) -> Artifact:
        settings = self.settings
        # With CHARGECAST_MODEL_PUBLIC_KEY: the signature first, then the load pinned to what it covered.
        verified = signing.check(settings.model_dir, settings.model_public_key, settings.model_sha256)
        model = Artifact.load(verified.root, verified.digest)
        if self.audit is not None:  # `chargecast serve` pins the digest it verified; else the file's
            metadata = Path(settings.model_dir) / METADATA_FILE
            self.audit.loaded(model, verified.digest or hashlib.sha256(metadata.read_bytes()).hexdigest())
        warm_up(model)
        return model

    async def load(self) -> None:
        """Load and warm the model off the event loop; the service is ready only after both."""
        start = time.perf_counter()
        try:
            model = await anyio.to_thread.run_sync(self._load_and_warm)
        except Exception as exc:
            self.load_error = str(exc) or type(exc).__name__
            self._loaded.set()
            log.error(
                "model failed to load",
                extra={"fields": {"model_dir": str(self.settings.model_dir), "error": self.load_error}},
            )
            if self.settings.model_sha256:
                # Pinned to the version `chargecast serve` verified: serve that one or none. The
                # supervisor stops the server on this exit code instead of restarting in a loop.
                self.access.flush()
                os._exit(MODEL_FAILED_EXIT)
            return
        self.model_info = model_info(model)
        self.metrics.set_model(model.version, model.predictor.kind, model.level)
        self.metrics.ready.set(1)
        self.model = model
        self._loaded.set()
        gc.collect()
        gc.freeze()  # start-up objects never die: keep them out of every later collection (tail latency)
        log.info(
            "model loaded",
            extra={"fields": {"model_version": model.version, "seconds": round(time.perf_counter() - start, 3)}},
        )
