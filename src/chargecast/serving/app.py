"""The ASGI app: thin Starlette routes over :mod:`protocol`, :mod:`metrics` and the model.

Routes only move bytes: they read the body within its limit, hand it to
:mod:`chargecast.serving.protocol` and send back what it made. The model loads in the background
after start-up, so ``/healthz`` answers at once and ``/readyz`` says 503 until the model
is loaded and a warm-up prediction succeeded. Starlette rather than FastAPI: the
prediction itself takes microseconds, so per-request framework overhead is what matters.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chargecast.model.artifact import Artifact
from chargecast.schema import Issue
from chargecast.serving import headers as security
from chargecast.serving import openapi, protocol
from chargecast.serving.budget import (
    FORM_FACTOR,
    JSON_PER_BYTE,
    Lease,
    MemoryBudget,
    answer_cost,
    csv_cost,
    form_cost,
    json_cost,
)
from chargecast.serving.form import render_page
from chargecast.serving.guard import SLOW_BODY
from chargecast.serving.logs import AccessLog
from chargecast.serving.metrics import Metrics
from chargecast.serving.protocol import ApiError
from chargecast.settings import Settings

log = logging.getLogger("chargecast.serving.app")
T = TypeVar("T")
JSON: Final = "application/json"
FORM_ERROR_KEY: Final = ""  # render_page shows errors[""] as a message that belongs to no field
INLINE_BODY: Final = 64 * 1024  # bigger JSON bodies are parsed off the event loop
MODEL_FAILED_EXIT: Final = 3  # uvicorn's STARTUP_FAILURE: the supervisor stops rather than restarts
MODEL_WAIT_SECONDS = 5.0  # how long a request waits for a model that is still loading
CSV_SLOTS: Final = 2  # concurrent CSV jobs per worker: each holds its upload in memory
CSV_SLOT_WAIT: Final = 10.0  # seconds a CSV request may wait for a slot before a 503
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
NO_OPTIONS: Final[tuple[bool, protocol.Levels | None]] = (False, None)  # no explain, no quantiles
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
LEASE: Final = "chargecast.lease"  # scope key: the request's hold on its worker's memory budget
PIECE: Final = 64 * 1024  # bigger answer bodies go out in pieces, so a client that stops reading stops the app


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _too_large(limit: int, hint: str) -> ApiError:
    return ApiError(
        413,
        f"body is larger than the limit of {limit:,} bytes{hint}",
        [Issue("body", f"must be at most {limit} bytes")],
        {"Connection": "close"},
    )


def _too_slow(scope: Scope) -> ApiError:
    limit = "must arrive at the minimum rate (CHARGECAST_BODY_MIN_RATE)"
    return ApiError(408, str(scope[SLOW_BODY]), [Issue("body", limit)], {"Connection": "close"})


ParseCost = Callable[[bytes | bytearray], int]


def _nothing(body: bytes | bytearray) -> int:
    return 0


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    hint: str = "",
    parse_cost: ParseCost = _nothing,
    announced_factor: int = 0,
) -> bytes | bytearray:
    """The whole body, refused with 413 as soon as it passes ``limit`` (declared or streamed).

    Each chunk is paid for on the request's lease as it arrives (503 when the worker's budget
    is spent), and once the body is whole, what parsing it will hold (``parse_cost``): a
    stalled body holds only what it sent. A body announced by Content-Length is refused at
    once when ``1 + announced_factor`` times its size could not be paid for now. The protocol flags a body that breaks
    the minimum rate (:mod:`chargecast.serving.guard`): that is a 408. A body that arrives in one
    message (the usual small JSON) is returned as is, uncopied.
    """
    lease: Lease = scope[LEASE]
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit():
        size = int(declared)
        if size > limit:
            raise _too_large(limit, hint)
        lease.fits(size * (1 + announced_factor), "body")
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit, hint)
    if not message.get("more_body", False):
        lease.take(len(body) + parse_cost(body), "body")
        return body
    lease.take(len(body), "body")
    buffer = bytearray(body)
    while True:
        if SLOW_BODY in scope:
            raise _too_slow(scope)
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if len(buffer) + len(chunk) > limit:
            raise _too_large(limit, hint)
        lease.take(len(chunk), "body")
        buffer += chunk
        if not message.get("more_body", False):
            lease.take(parse_cost(buffer), "body")
            return buffer


class Service:
    """One worker's state: settings, the model once loaded, metrics, access log, documents."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Artifact | None = None
        self.model_info: bytes = b"{}"
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.access = AccessLog(settings.log_level)
        self.keys = tuple(k.get_secret_value().encode() for k in settings.api_keys)
        self.document = openapi.build(settings)
        self.openapi_json = openapi.to_json(self.document)
        self.docs_html = openapi.render_docs(self.document)
        self.docs_headers = security.page_headers(self.docs_html)
        self.csv_slots = anyio.Semaphore(CSV_SLOTS)
        self.budget = MemoryBudget(settings.worker_memory_budget)
        self._loaded = asyncio.Event()  # set when loading ends, either way

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    async def flush_forever(self) -> None:
        """Write metric tallies and pending access-log lines out a few times a second."""
        while True:
            await asyncio.sleep(self.metrics.FLUSH_SECONDS)
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

    def authorize(self, scope: Scope) -> None:
        if self.keys:
            protocol.check_bearer(_header(scope, b"authorization"), self.keys)

    def _load_and_warm(self) -> Artifact:
        model = Artifact.load(self.settings.model_dir, self.settings.model_sha256)
        protocol.warm_up(model)
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
        self.model_info = protocol.model_info(model)
        self.metrics.set_model(model.version, model.predictor.kind, model.level)
        self.model = model
        self._loaded.set()
        gc.collect()
        gc.freeze()  # start-up objects never die: keep them out of every later collection (tail latency)
        log.info(
            "model loaded",
            extra={"fields": {"model_version": model.version, "seconds": round(time.perf_counter() - start, 3)}},
        )


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
        self._prefix = os.urandom(4).hex() + "-"
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in self.routes else "other"
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                request_id = value.decode("ascii")
        if not request_id:
            request_id = f"{self._prefix}{next(self._counter):x}"
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header, *security.COMMON]
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

        metrics = self.service.metrics
        metrics.started(route)
        lease = scope[LEASE] = Lease(self.service.budget)
        try:
            await self.direct.get((method, path), self.app)(scope, receive, send_with_id)
        finally:
            lease.release()  # the answer has been handed to the socket (or never will be)
            elapsed = time.perf_counter() - start
            final = status or 500
            metrics.finished(route, method, final, elapsed)
            self.service.access.write(request_id, method, route, final, elapsed, self.service.version)


def _pay_for_answer(lease: Lease, payload: Any, explain: bool, levels: protocol.Levels | None) -> None:
    rows = len(payload) if type(payload) is list else 1
    protocol.check_quantile_cells(rows, levels)  # a 422 for too many, before a 503 for too big
    lease.take(answer_cost(rows, explain, len(levels.values) if levels is not None else 0), "answer")


_JSON_TYPE: Final = (b"content-type", JSON.encode())


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A JSON answer straight to ASGI (what Starlette's Response would send, minus its cost)."""
    raw = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class AsgiEndpoint:
    """Marks a function as a raw ASGI endpoint for Starlette's Route (a plain function would be
    wrapped as Request -> Response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers, JSON)


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status, exc.headers)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app for one process; the model loads in the background once it starts."""
    settings = settings if settings is not None else Settings()
    svc = Service(settings)
    max_body = settings.max_body_bytes
    json_hint = " (send bigger batches to /api/v1/predict/csv)"

    # -- JSON API ------------------------------------------------------------------------
    async def api_predict(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /api/v1/predict``, in raw ASGI: the hot route skips Starlette's Request and
        Response objects and its per-route exception wrapper, which cost more than the forecast."""
        try:
            svc.authorize(scope)
            model = svc.model or await svc.wait_for_model()
            protocol.require_json(_header(scope, b"content-type"))
            query = scope["query_string"]
            explain, levels = protocol.predict_options(query) if query else NO_OPTIONS
            body = await read_body(scope, receive, max_body, json_hint, json_cost, JSON_PER_BYTE)
            if len(body) <= INLINE_BODY:
                payload = protocol.parse_json(body)
                if type(payload) is dict and not explain:  # the hot path: scalar (quantiles too), on the loop
                    scored = protocol.predict_one(model, payload, levels=levels)
                else:
                    _pay_for_answer(scope[LEASE], payload, explain, levels)
                    scored = await anyio.to_thread.run_sync(protocol.predict_payload, model, payload, explain, levels)
            else:
                scored = await anyio.to_thread.run_sync(_parse_and_predict, model, body, explain, levels, scope[LEASE])
        except ApiError as exc:
            await _send_json(send, exc.status, exc.body(), exc.headers)
            return
        except ClientDisconnect:
            await _send_json(send, 499, b"")  # nobody listens (uvicorn drops it); the status is for the logs
            return
        svc.metrics.observe("api", scored.rows, scored.charges)
        await _send_json(send, 200, scored.body)

    def _parse_and_predict(
        model: Artifact, body: bytes | bytearray, explain: bool, levels: protocol.Levels | None, lease: Lease
    ) -> protocol.Scored:
        payload = protocol.parse_json(body)
        _pay_for_answer(lease, payload, explain, levels)
        return protocol.predict_payload(model, payload, explain, levels)

    async def predict_api(request: Request) -> Response:
        svc.authorize(request.scope)
        model = svc.model or await svc.wait_for_model()
        protocol.parse_query(request.scope["query_string"])
        protocol.require_json(_header(request.scope, b"content-type"))
        body = await read_body(request.scope, request.receive, max_body, "", json_cost, JSON_PER_BYTE)
        scored = protocol.predict_bare(model, protocol.parse_json(body))
        svc.metrics.observe("predict_api", scored.rows, scored.charges)
        return Response(scored.body, media_type=JSON)

    async def csv_job(request: Request, work: Callable[[Artifact, protocol.CsvSource], T]) -> T:
        """Checks, the upload, its cost, then a CSV slot and ``work`` off the loop.

        The upload is read before a slot is taken: slots bound CPU, not clients, so a slow
        upload holds only the memory it has actually sent (paid for on its lease, and cut by
        the minimum body rate), never a slot that a real request waits for.
        """
        svc.authorize(request.scope)
        model = svc.model or await svc.wait_for_model()
        scope = request.scope
        protocol.parse_query(scope["query_string"])
        content_type = _header(scope, b"content-type")
        protocol.require_csv(content_type)
        with anyio.move_on_after(settings.csv_upload_timeout) as upload:
            body = await read_body(scope, request.receive, settings.csv_max_bytes, " (split the file)")
        if upload.cancelled_caught:
            raise ApiError(
                408,
                f"the CSV upload did not finish within {settings.csv_upload_timeout:g} s",
                [Issue("body", f"must arrive within {settings.csv_upload_timeout:g} s")],
                {"Connection": "close"},
            )
        source = protocol.csv_source(body if isinstance(body, bytearray) else bytearray(body), content_type)
        del body
        scope[LEASE].take(csv_cost(min(source.rows_bound(), settings.csv_max_rows + 1)), "CSV file")
        with anyio.move_on_after(CSV_SLOT_WAIT) as waited:
            await svc.csv_slots.acquire()
        if waited.cancelled_caught:
            raise ApiError(503, "busy scoring other CSV files; retry shortly", headers={"Retry-After": "5"})
        try:
            return await anyio.to_thread.run_sync(work, model, source)
        finally:
            svc.csv_slots.release()

    async def api_predict_csv(request: Request) -> Response:
        scored = await csv_job(request, _score_csv)
        headers = {}
        if scored.filename:
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", scored.filename.rsplit("/", 1)[-1]).removesuffix(".csv")
            headers["Content-Disposition"] = f'attachment; filename="{stem[:100]}.scored.csv"'
        return StreamingResponse(protocol.csv_chunks(scored), media_type="text/csv; charset=utf-8", headers=headers)

    def _score_csv(model: Artifact, source: protocol.CsvSource) -> protocol.CsvScored:
        tally = svc.metrics.batch()
        scored = protocol.score_csv(model, source, settings.csv_max_rows, on_chunk=tally.add)
        svc.metrics.commit("csv", tally)  # only a file that was valid throughout counts
        return scored

    async def api_predict_csv_summary(request: Request) -> Response:
        return _json(await csv_job(request, _summarize_csv))

    def _summarize_csv(model: Artifact, source: protocol.CsvSource) -> bytes:
        tally = svc.metrics.batch()
        summary = protocol.summarize_csv(model, source, settings.csv_max_rows, on_chunk=tally.add)
        svc.metrics.commit("csv_summary", tally)
        return summary

    async def model_route(request: Request) -> Response:
        svc.authorize(request.scope)
        if svc.model is None:
            await svc.wait_for_model()
        protocol.parse_query(request.scope["query_string"])
        return _json(svc.model_info)

    # -- the form ------------------------------------------------------------------------
    def _page(model: Artifact, status: int, **kwargs: Any) -> Response:
        kwargs.setdefault("values", {})
        kwargs.setdefault("errors", {})
        kwargs.setdefault("result", None)
        page = render_page(model=model, **kwargs)
        return HTMLResponse(page, status, security.page_headers(page, form_action="'self'"))

    def _message_page(exc: ApiError) -> Response:
        """A bare page for a form request that gets no form: no key (401) or no model (503)."""
        text = exc.message.replace("&", "&amp;").replace("<", "&lt;")
        page = f'<!doctype html><html lang="en"><meta charset="utf-8"><title>chargecast</title><p>{text}</p></html>'
        return HTMLResponse(page, exc.status, {**exc.headers, **security.page_headers(page)})

    async def form_page(request: Request, submitted: bool) -> Response:
        # With API keys set the form forecasts only for a key, like every other forecasting route
        # (a browser cannot send one: an identity-aware proxy in front adds it). The key comes
        # first, and its refusal shows neither the form nor the model's details.
        try:
            svc.authorize(request.scope)
            model = svc.model or await svc.wait_for_model()
        except ApiError as exc:
            return _message_page(exc)
        try:
            protocol.parse_query(request.scope["query_string"])  # the form takes none, like the API
            if not submitted:
                return _page(model, 200)
            body = await read_body(request.scope, request.receive, max_body, "", form_cost, FORM_FACTOR)
            values = protocol.form_values(body, _header(request.scope, b"content-type"))
        except ApiError as exc:
            response = _page(model, exc.status, errors={FORM_ERROR_KEY: exc.message})
            response.headers.update(exc.headers)
            return response
        encoded, errors = protocol.check_form(values)
        if errors:
            return _page(model, 422, values=values, errors=errors)
        result = protocol.form_result(model, encoded)
        svc.metrics.observe_one("form", encoded, result.charges)
        return _page(model, 200, values=values, result=result)

    async def form_post(request: Request) -> Response:
        return await form_page(request, submitted=True)

    async def form_root(request: Request) -> Response:
        return await form_page(request, submitted=request.method == "POST")

    # -- operations ----------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        return _json(b'{"status":"ok"}')

    async def readyz(request: Request) -> Response:
        try:
            model = svc.require_model()
        except ApiError as exc:
            return _error(exc)
        return _json(b'{"status":"ready","model_version":' + orjson.dumps(model.version) + b"}")

    async def openapi_route(request: Request) -> Response:
        return _json(svc.openapi_json)

    async def docs(request: Request) -> Response:
        return HTMLResponse(svc.docs_html, headers=svc.docs_headers)

    routes = [
        Route("/api/v1/predict", AsgiEndpoint(api_predict), methods=["POST"]),
        Route("/api/v1/predict/csv", api_predict_csv, methods=["POST"]),
        Route("/api/v1/predict/csv/summary", api_predict_csv_summary, methods=["POST"]),
        Route("/api/v1/model", model_route, methods=["GET"]),
        Route("/predict_api", predict_api, methods=["POST"]),
        Route("/", form_root, methods=["GET", "POST"]),  # one route, so a 405 lists both in Allow
        Route("/predict", form_post, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(svc.load()), asyncio.create_task(svc.flush_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            svc.metrics.process_exit()
            svc.access.flush()

    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        ApiError: _on_api_error,
        HTTPException: _on_http_exception,
        ClientDisconnect: _on_disconnect,
        Exception: _on_crash,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Observe,
                service=svc,
                routes=frozenset(r.path for r in routes),
                direct={("POST", "/api/v1/predict"): api_predict},
            )
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.service = svc
    return app


def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc)


def _on_http_exception(request: Request, exc: Exception) -> Response:
    """Routing's 404 and 405, in the service's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        issue = Issue("path", "is not a route of this service (see /docs)", request.url.path)
    else:
        issue = Issue("method", f"is not allowed here (allowed: {(exc.headers or {}).get('Allow', '?')})")
    body = protocol.error_body(exc.status_code, str(exc.detail), [issue])
    return _json(body, exc.status_code, dict(exc.headers or {}))


def _on_disconnect(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody is listening; the status is for the logs and metrics


def _on_crash(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id, "route": request.url.path}})
    # Starlette answers this outside the middleware, so the common headers are added here.
    return _json(
        protocol.error_body(500, "internal error; the request id is in the logs"), 500, dict(security.COMMON_TEXT)
    )
