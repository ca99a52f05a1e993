"""The ASGI app: the routes of :mod:`~chargecast.serving.routes` under one request middleware.

:class:`Observe` wraps every request: a request id, the metrics, the access log, the memory
lease and the security headers. It also calls the hot route straight away (``direct``),
past Starlette's exception middleware and router, which cost more than the forecast.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chargecast.schema import Issue
from chargecast.serving import headers as security
from chargecast.serving.actuals import monitor_forever
from chargecast.serving.audit import CALLER
from chargecast.serving.budget import Lease
from chargecast.serving.errors import ApiError, error_body
from chargecast.serving.iap import IapGate
from chargecast.serving.routes import DIRECT, ROUTES
from chargecast.serving.service import Service
from chargecast.serving.transport import LEASE, SERVICE, error_response, json_response
from chargecast.settings import Settings

log = logging.getLogger("chargecast.serving.app")
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
AUDIT_ID_HEADER: Final = b"x-audit-request-id"  # the request_id of this request's audit records
PIECE: Final = 64 * 1024  # bigger answer bodies go out in pieces, so a client that stops reading stops the app


class Observe:
    """Per request: a request id, the in-progress gauge, count and latency by route and status, the access log."""

    def __init__(
        self, app: ASGIApp, service: Service, routes: frozenset[str], direct: Mapping[tuple[str, str], ASGIApp]
    ) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        # Raw ASGI endpoints called straight from here, past Starlette's exception middleware
        # and router: the hot route's forecast costs less than those layers. They handle their
        # own errors; other methods on the same path still go through the router (405).
        self.direct = direct
        # 16 random hex digits per worker, then a counter: unique across workers and restarts,
        # so the audit log's key never collides even when clients reuse their X-Request-IDs.
        self._prefix = os.urandom(8).hex() + "-"
        self.audited = service.audit is not None
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in self.routes else "other"
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        client_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                client_id = value.decode("ascii")
        request_id = f"{self._prefix}{next(self._counter):x}"
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_id
        shown = client_id or request_id  # echoed as today: the client's own id when it sent one
        # With the audit log on, the minted id too: it keys this request's audit records, so a
        # client that sent its own X-Request-ID can still name the forecast in /api/v1/actuals.
        ids: tuple[tuple[bytes, bytes], ...] = ((b"x-request-id", shown.encode("ascii")),)
        if self.audited:
            ids = (*ids, (AUDIT_ID_HEADER, request_id.encode("ascii")))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *ids, *security.COMMON]
            elif len(body := message.get("body", b"")) > PIECE:
                # One big write would sit whole in the transport's buffer if the client stops
                # reading; in pieces, flow control holds the app (and its lease) instead, until
                # the send deadline resets the client.
                more, size = message.get("more_body", False), len(body)
                for start in range(0, size, PIECE):
                    piece = body[start : start + PIECE]
                    await send({"type": "http.response.body", "body": piece, "more_body": more or start + PIECE < size})
                return
            await send(message)

        service = scope[SERVICE] = self.service
        metrics = service.metrics
        metrics.started(route)
        lease = scope[LEASE] = Lease(service.budget)
        try:
            await self.direct.get((method, path), self.app)(scope, receive, send_with_id)
        finally:
            lease.release()  # the answer has been handed to the socket (or never will be)
            elapsed = time.perf_counter() - start
            final = status or 500
            metrics.finished(route, method, final, elapsed)
            service.access.write(shown, method, route, final, elapsed, service.version, scope.get(CALLER))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Load the model and flush metrics in the background while the app serves."""
    service: Service = app.state.service
    tasks = [asyncio.create_task(service.load()), asyncio.create_task(service.flush_forever())]
    tasks.append(asyncio.create_task(monitor_forever(service)))  # the drift and coverage gauges
    if service.audit is not None:
        service.audit.writer.start()
    try:
        yield
    finally:
        if service.audit is not None:  # every answered request is queued by now: write it (or spool it)
            await asyncio.to_thread(service.audit.writer.close, service.settings.shutdown_timeout / 2)
            service.metrics.audit(service.audit.writer)
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        service.metrics.process_exit()
        service.access.flush()
        await asyncio.to_thread(service.monitoring.close)


def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _on_http_exception(request: Request, exc: Exception) -> Response:
    """Routing's 404 and 405, in the service's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        issue = Issue("path", "is not a route of this service (see /docs)", request.url.path)
    else:
        issue = Issue("method", f"is not allowed here (allowed: {(exc.headers or {}).get('Allow', '?')})")
    body = error_body(exc.status_code, str(exc.detail), [issue])
    return json_response(body, exc.status_code, dict(exc.headers or {}))


def _on_disconnect(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody is listening; the status is for the logs and metrics


def _on_crash(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id, "route": request.url.path}})
    # Starlette answers this outside the middleware, so the common headers are added here.
    return json_response(
        error_body(500, "internal error; the request id is in the logs"), 500, dict(security.COMMON_TEXT)
    )


HANDLERS: Final[Mapping[Any, Callable[[Request, Exception], Response | Awaitable[Response]]]] = {
    ApiError: _on_api_error,
    HTTPException: _on_http_exception,
    ClientDisconnect: _on_disconnect,
    Exception: _on_crash,
}


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app for one process; the model loads in the background once it starts."""
    service = Service(settings if settings is not None else Settings())
    direct: Mapping[tuple[str, str], ASGIApp] = DIRECT
    middleware = []
    if service.iap is not None:  # behind IAP: its header on every path but the probes, direct routes too
        direct = {route: IapGate(endpoint, service.iap) for route, endpoint in DIRECT.items()}
        middleware.append(Middleware(IapGate, iap=service.iap))
    observe = Middleware(Observe, service=service, routes=frozenset(r.path for r in ROUTES), direct=direct)
    middleware.insert(0, observe)
    app = Starlette(routes=list(ROUTES), middleware=middleware, exception_handlers=HANDLERS, lifespan=lifespan)
    app.state.service = service
    return app
