"""``POST /api/v1/actuals`` and the per-worker monitoring task (docs/monitoring.md).

Both use one store per worker, apart from the audit writer's, opened on first use and kept
for the worker's life, always off the event loop (``anyio.to_thread``) and one thread at a
time (a store's rule). With the audit log off, the route answers 503 and the task does
nothing. The task's figures go to :class:`~chargecast.serving.metrics.Metrics`' monitor
gauges; the drift statistics and windows come from :mod:`chargecast.monitor` (numpy only).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from chargecast.audit.store import Store, open_store
from chargecast.model.artifact import Artifact
from chargecast.monitor import actuals, drift
from chargecast.monitor.window import Recent, recent
from chargecast.schema import Issue, ValidationError
from chargecast.serving.budget import JSON_PER_BYTE, json_cost
from chargecast.serving.errors import ApiError, invalid
from chargecast.serving.jsonbody import parse_json, require_json
from chargecast.serving.request import parse_query
from chargecast.serving.transport import header, json_response, read_body
from chargecast.settings import Settings

if TYPE_CHECKING:
    from chargecast.serving.service import Service

T = TypeVar("T")
log = logging.getLogger("chargecast.serving.app")
STORE_DOWN: Final = "the audit store is unavailable; retry shortly (a repeat is never counted twice)"
AUDIT_OFF: Final = "the audit log is off (CHARGECAST_AUDIT_URL=off): actual charges have no forecast to join"
RETRY_SECONDS: Final = 5


class Monitoring:
    """One worker's store for actuals and the gauges' window; nothing opened while the log is off."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.audit_url
        self.enabled = settings.audit_on
        self.key = settings.patient_key() if self.enabled else None  # the audit log's own key
        self.thresholds = drift.parse_thresholds(drift.split_thresholds(settings.drift_thresholds))
        self.hours = settings.monitor_window_hours
        self.cap = settings.monitor_max_records
        self._store: Store | None = None
        self._lock = threading.Lock()

    def _with_store(self, work: Callable[[Store], T]) -> T:
        with self._lock:
            if self._store is None:
                store = open_store(self.url)
                store.migrate()
                self._store = store
            try:
                return work(self._store)
            except Exception:
                self._drop()  # a connection that failed is not trusted again: the next call reopens
                raise

    def _drop(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # closing a broken connection may fail too; it is gone either way
                log.debug("audit store not closed cleanly", extra={"fields": {"error": str(exc)}})

    def record(self, claims: list[actuals.Claim]) -> tuple[int, int]:
        now = datetime.now(UTC)
        return self._with_store(lambda store: actuals.record(store, claims, self.key, now))

    def recent(self, model: Artifact) -> Recent | None:
        """The gauges' window, or None for a model without a training reference (retrain it)."""
        ref = model.reference
        if ref is None:
            return None
        now = datetime.now(UTC)
        return self._with_store(lambda store: recent(store, ref, now, self.hours, self.cap, self.thresholds))

    def close(self) -> None:
        with self._lock:
            self._drop()


async def post_actuals(request: Request, service: Service, model: Artifact) -> Response:
    """Store actual charges; answers ``{"added": n, "known": m}``, a repeat adds nothing."""
    monitoring = service.monitoring
    parse_query(request.scope["query_string"])
    if not monitoring.enabled:
        raise ApiError(503, AUDIT_OFF, [Issue("audit", "is off")])
    require_json(header(request.scope, b"content-type"))
    limit = service.settings.max_body_bytes
    body = await read_body(request.scope, request.receive, limit, "", json_cost, JSON_PER_BYTE)
    try:
        claims = actuals.check_payload(parse_json(body))
        added, known = await anyio.to_thread.run_sync(monitoring.record, claims)
    except ValidationError as exc:
        raise invalid(exc.issues, exc.total, what="actuals") from None
    except ApiError:
        raise
    except Exception as exc:  # the database is down or refuses: say so, the caller retries (idempotent)
        log.error("actuals not stored", extra={"fields": {"error": str(exc) or type(exc).__name__}})
        retry = {"Retry-After": str(RETRY_SECONDS)}
        raise ApiError(503, STORE_DOWN, [Issue("audit", "is unavailable")], retry) from None
    return json_response(orjson.dumps({"added": added, "known": known}))


async def monitor_forever(service: Service) -> None:
    """Every ``CHARGECAST_MONITOR_SECONDS``: read the recent window in a thread, set the gauges."""
    monitoring = service.monitoring
    if not monitoring.enabled:
        return
    while True:
        model = service.model
        if model is not None:
            try:
                found = await anyio.to_thread.run_sync(monitoring.recent, model)
            except Exception as exc:  # a store that is down must not end the task: the next round retries
                log.warning("monitoring window unreadable", extra={"fields": {"error": str(exc)}})
            else:
                if found is not None:
                    service.metrics.set_monitor(found)
        await asyncio.sleep(service.settings.monitor_seconds if model is not None else 1.0)
