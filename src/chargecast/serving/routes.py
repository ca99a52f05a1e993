"""The routes: module-level endpoints over the protocol modules, behind one gate.

Endpoints only move bytes: they read the body within its limit, hand it to the protocol
(:mod:`~chargecast.serving.jsonbody`, :mod:`~chargecast.serving.predict`,
:mod:`~chargecast.serving.formdata`, :mod:`~chargecast.serving.csvroute`) and send back what
it made. Each finds its worker's :class:`~chargecast.serving.service.Service` in the scope
(the request middleware puts it there). Every route that forecasts or shows the model sits
behind a :class:`Gate`, which checks the API key and waits for the model once, for all of
them. Starlette rather than FastAPI: the prediction itself takes microseconds, so
per-request framework overhead is what matters.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chargecast.model.artifact import Artifact
from chargecast.model.totals import BookTotal, summary_json
from chargecast.schema import Issue
from chargecast.serving import audit as auditing
from chargecast.serving import csvroute
from chargecast.serving import headers as security
from chargecast.serving.actuals import post_actuals
from chargecast.serving.budget import FORM_FACTOR, JSON_PER_BYTE, Lease, answer_cost, csv_cost, form_cost, json_cost
from chargecast.serving.errors import ApiError
from chargecast.serving.form import FORM_ERROR_KEY, render_message, render_page
from chargecast.serving.formdata import check_form, form_values
from chargecast.serving.jsonbody import parse_json, require_json
from chargecast.serving.metrics import BatchTally
from chargecast.serving.predict import (
    Scored,
    check_quantile_cells,
    form_result,
    predict_bare,
    predict_one,
    predict_payload,
)
from chargecast.serving.request import Levels, parse_query, predict_options
from chargecast.serving.service import Service
from chargecast.serving.transport import (
    JSON,
    LEASE,
    SERVICE,
    error_response,
    header,
    json_response,
    read_body,
    send_json,
)

T = TypeVar("T")
INLINE_BODY: Final = 64 * 1024  # bigger JSON bodies are parsed off the event loop
CSV_SLOT_WAIT: Final = 10.0  # seconds a CSV request may wait for a slot before a 503
NO_OPTIONS: Final[tuple[bool, Levels | None]] = (False, None)  # no explain, no quantiles
JSON_HINT: Final = " (send bigger batches to /api/v1/predict/csv)"

Handler = Callable[[Request, Service, Artifact], Awaitable[Response]]
AsgiHandler = Callable[[Scope, Receive, Send, Service, Artifact], Awaitable[None]]
Refusal = Callable[[ApiError], Response]


# -- the gate --------------------------------------------------------------------------
class Gate:
    """A route that forecasts or shows the model, behind the check all of them share.

    :meth:`Service.admit` checks the API key, then waits for the model while it loads; a
    refusal is answered here with ``refuse`` (JSON, or a small page for the form), so no
    endpoint repeats either check. An ASGI app rather than a function, so that Starlette's
    Route calls it as is instead of wrapping it as Request -> Response.
    """

    def __init__(self, handler: AsgiHandler, refuse: Refusal = error_response) -> None:
        self.handler = handler
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: Service = scope[SERVICE]
        try:
            model = await service.admit(scope)
        except ApiError as exc:
            await self.refuse(exc)(scope, receive, send)
            return
        await self.handler(scope, receive, send, service, model)


def gated(handler: Handler, refuse: Refusal = error_response) -> Gate:
    """A Request -> Response endpoint behind the gate; what it raises reaches the app's handlers."""

    async def respond(scope: Scope, receive: Receive, send: Send, service: Service, model: Artifact) -> None:
        response = await handler(Request(scope, receive, send), service, model)
        await response(scope, receive, send)

    return Gate(respond, refuse)


# -- JSON API ----------------------------------------------------------------------------
async def api_predict(scope: Scope, receive: Receive, send: Send, service: Service, model: Artifact) -> None:
    """``POST /api/v1/predict``, in raw ASGI: the hot route skips Starlette's Request and
    Response objects and its per-route exception wrapper, which cost more than the forecast.
    The request middleware calls it directly, so it answers its own errors."""
    try:
        require_json(header(scope, b"content-type"))
        query = scope["query_string"]
        explain, levels = predict_options(query) if query else NO_OPTIONS
        body = await read_body(scope, receive, service.settings.max_body_bytes, JSON_HINT, json_cost, JSON_PER_BYTE)
        if len(body) <= INLINE_BODY:
            payload = parse_json(body)
            if type(payload) is dict and not explain:  # the hot path: scalar (quantiles too), on the loop
                scored = predict_one(model, payload, levels=levels)
            else:
                _pay_for_answer(scope[LEASE], payload, explain, levels)
                scored = await anyio.to_thread.run_sync(predict_payload, model, payload, explain, levels)
        else:
            payload, scored = await anyio.to_thread.run_sync(
                _parse_and_predict, model, body, explain, levels, scope[LEASE]
            )
        if (audit := service.audit) is not None:  # a tuple on the writer's queue, nothing more
            kind, rows = (auditing.ONE, 1) if type(payload) is dict else (auditing.MANY, scored.count)
            body = auditing.compact(scored.body)
            audit.submit(scope, "/api/v1/predict", kind, rows, scored.rows, body, audit.refs(payload))
    except ApiError as exc:
        await send_json(send, exc.status, exc.body(), exc.headers)
        return
    except ClientDisconnect:
        await send_json(send, 499, b"")  # nobody listens (uvicorn drops it); the status is for the logs
        return
    service.metrics.observe("api", scored.rows, scored.charges)
    await send_json(send, 200, scored.body)


def _pay_for_answer(lease: Lease, payload: Any, explain: bool, levels: Levels | None) -> None:
    rows = len(payload) if type(payload) is list else 1
    check_quantile_cells(rows, levels)  # a 422 for too many, before a 503 for too big
    lease.take(answer_cost(rows, explain, len(levels.values) if levels is not None else 0), "answer")


def _parse_and_predict(
    model: Artifact, body: bytes | bytearray, explain: bool, levels: Levels | None, lease: Lease
) -> tuple[Any, Scored]:
    payload = parse_json(body)
    _pay_for_answer(lease, payload, explain, levels)
    return payload, predict_payload(model, payload, explain, levels)


async def predict_api(request: Request, service: Service, model: Artifact) -> Response:
    """``POST /predict_api``, the tutorial's route: one record in, a bare number out."""
    parse_query(request.scope["query_string"])
    require_json(header(request.scope, b"content-type"))
    body = await read_body(
        request.scope, request.receive, service.settings.max_body_bytes, "", json_cost, JSON_PER_BYTE
    )
    payload = parse_json(body)
    scored = predict_bare(model, payload)
    if (audit := service.audit) is not None:
        audit.submit(request.scope, "/predict_api", auditing.BARE, 1, scored.rows, scored.charges, audit.refs(payload))
    service.metrics.observe("predict_api", scored.rows, scored.charges)
    return Response(scored.body, media_type=JSON)


async def model_route(request: Request, service: Service, model: Artifact) -> Response:
    parse_query(request.scope["query_string"])
    return json_response(service.model_info)


# -- CSV -------------------------------------------------------------------------------
CsvWork = Callable[[Service, Artifact, csvroute.CsvSource, Scope], T]


async def _csv_job(request: Request, service: Service, model: Artifact, work: CsvWork[T]) -> T:
    """Checks, the upload, its cost, then a CSV slot and ``work`` off the loop.

    The upload is read before a slot is taken: slots bound CPU, not clients, so a slow
    upload holds only the memory it has actually sent (paid for on its lease, and cut by
    the minimum body rate), never a slot that a real request waits for.
    """
    scope, settings = request.scope, service.settings
    parse_query(scope["query_string"])
    content_type = header(scope, b"content-type")
    csvroute.require_csv(content_type)
    with anyio.move_on_after(settings.csv_upload_timeout) as upload:
        body = await read_body(scope, request.receive, settings.csv_max_bytes, " (split the file)")
    if upload.cancelled_caught:
        raise ApiError(
            408,
            f"the CSV upload did not finish within {settings.csv_upload_timeout:g} s",
            [Issue("body", f"must arrive within {settings.csv_upload_timeout:g} s")],
            {"Connection": "close"},
        )
    source = csvroute.csv_source(body if isinstance(body, bytearray) else bytearray(body), content_type)
    del body
    scope[LEASE].take(csv_cost(min(source.rows_bound(), settings.csv_max_rows + 1)), "CSV file")
    with anyio.move_on_after(CSV_SLOT_WAIT) as waited:
        await service.csv_slots.acquire()
    if waited.cancelled_caught:
        raise ApiError(503, "busy scoring other CSV files; retry shortly", headers={"Retry-After": "5"})
    try:
        return await anyio.to_thread.run_sync(work, service, model, source, scope)
    finally:
        service.csv_slots.release()


def _csv_tally(service: Service) -> tuple[BatchTally, list[Any], Callable[[Any, Any], None]]:
    """The metrics' tally, and (with the audit log on) the encoded rows of every chunk."""
    tally, inputs = service.metrics.batch(), []

    def add(X: Any, charges: Any) -> None:
        tally.add(X, charges)
        if service.audit is not None:
            inputs.append(X)

    return tally, inputs, add


def _audit_csv(
    service: Service, model: Artifact, scope: Scope, route: str, inputs: list[Any], scored: csvroute.CsvScored
) -> None:
    audit = service.audit
    if audit is None:
        return
    refs = csvroute.patient_refs(scored.source)
    if refs is not None and any(refs):
        audit.require_key()  # the same 422 as the JSON routes
    X = np.concatenate(inputs)
    audit.submit(scope, route, auditing.ARRAYS, len(X), X, scored.charges, scored.low, scored.high, refs)


def _score_csv(service: Service, model: Artifact, source: csvroute.CsvSource, scope: Scope) -> csvroute.CsvScored:
    tally, inputs, add = _csv_tally(service)
    scored = csvroute.score_csv(model, source, service.settings.csv_max_rows, on_chunk=add)
    _audit_csv(service, model, scope, "/api/v1/predict/csv", inputs, scored)
    service.metrics.commit("csv", tally)  # only a file that was valid throughout counts
    return scored


def _summarize_csv(service: Service, model: Artifact, source: csvroute.CsvSource, scope: Scope) -> bytes:
    tally, inputs, add = _csv_tally(service)
    book = BookTotal(model)

    def both(X: Any, charges: Any) -> None:
        book.add(X, charges)
        add(X, charges)

    scored = csvroute.summarize_scored(model, source, service.settings.csv_max_rows, both)
    _audit_csv(service, model, scope, "/api/v1/predict/csv/summary", inputs, scored)
    service.metrics.commit("csv_summary", tally)
    return summary_json(book)


async def predict_csv(request: Request, service: Service, model: Artifact) -> Response:
    scored = await _csv_job(request, service, model, _score_csv)
    headers = {}
    if scored.filename:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", scored.filename.rsplit("/", 1)[-1]).removesuffix(".csv")
        headers["Content-Disposition"] = f'attachment; filename="{stem[:100]}.scored.csv"'
    return StreamingResponse(csvroute.csv_chunks(scored), media_type="text/csv; charset=utf-8", headers=headers)


async def predict_csv_summary(request: Request, service: Service, model: Artifact) -> Response:
    return json_response(await _csv_job(request, service, model, _summarize_csv))


# -- the form --------------------------------------------------------------------------
def _page(model: Artifact, status: int, **kwargs: Any) -> Response:
    kwargs.setdefault("values", {})
    kwargs.setdefault("errors", {})
    kwargs.setdefault("result", None)
    page = render_page(model=model, **kwargs)
    return HTMLResponse(page, status, security.page_headers(page, form_action="'self'"))


def message_page(exc: ApiError) -> Response:
    """The form's refusal, a bare page: no key (401) or no model (503) shows neither the
    form nor the model's details. (A browser cannot send a key: with API keys set, an
    identity-aware proxy in front adds it.)"""
    page = render_message(exc.message)
    return HTMLResponse(page, exc.status, {**exc.headers, **security.page_headers(page)})


async def _form(request: Request, service: Service, model: Artifact, submitted: bool) -> Response:
    try:
        parse_query(request.scope["query_string"])  # the form takes none, like the API
        if not submitted:
            return _page(model, 200)
        limit = service.settings.max_body_bytes
        body = await read_body(request.scope, request.receive, limit, "", form_cost, FORM_FACTOR)
        values = form_values(body, header(request.scope, b"content-type"))
    except ApiError as exc:
        response = _page(model, exc.status, errors={FORM_ERROR_KEY: exc.message})
        response.headers.update(exc.headers)
        return response
    encoded, errors = check_form(values)
    if errors:
        return _page(model, 422, values=values, errors=errors)
    result = form_result(model, encoded)
    if (audit := service.audit) is not None:
        audit.submit(
            request.scope,
            request.url.path,
            auditing.FORM,
            1,
            encoded,
            result.charges,
            result.low,
            result.high,
            result.median,
        )
    service.metrics.observe_one("form", encoded, result.charges)
    return _page(model, 200, values=values, result=result)


async def form_root(request: Request, service: Service, model: Artifact) -> Response:
    return await _form(request, service, model, submitted=request.method == "POST")


async def form_post(request: Request, service: Service, model: Artifact) -> Response:
    return await _form(request, service, model, submitted=True)


# -- operations (open: no key, no model needed) -----------------------------------------
async def healthz(request: Request) -> Response:
    return json_response(b'{"status":"ok"}')


async def readyz(request: Request) -> Response:
    try:
        model = request.scope[SERVICE].require_model()
    except ApiError as exc:
        return error_response(exc)
    return json_response(b'{"status":"ready","model_version":' + orjson.dumps(model.version) + b"}")


async def openapi_route(request: Request) -> Response:
    return json_response(request.scope[SERVICE].openapi_json)


async def docs(request: Request) -> Response:
    service: Service = request.scope[SERVICE]
    return HTMLResponse(service.docs_html, headers=service.docs_headers)


PREDICT: Final = Gate(api_predict)
ROUTES: Final = (
    Route("/api/v1/predict", PREDICT, methods=["POST"]),
    Route("/api/v1/predict/csv", gated(predict_csv), methods=["POST"]),
    Route("/api/v1/predict/csv/summary", gated(predict_csv_summary), methods=["POST"]),
    Route("/api/v1/model", gated(model_route), methods=["GET"]),
    Route("/api/v1/actuals", gated(post_actuals), methods=["POST"]),  # they name logged forecasts: keyed alike
    Route("/predict_api", gated(predict_api), methods=["POST"]),
    Route("/", gated(form_root, message_page), methods=["GET", "POST"]),  # one route, so a 405 lists both in Allow
    Route("/predict", gated(form_post, message_page), methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi_route, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
)
# Raw ASGI endpoints the request middleware calls directly, past Starlette's exception
# middleware and router (see chargecast.serving.app.Observe).
DIRECT: Final[dict[tuple[str, str], ASGIApp]] = {("POST", "/api/v1/predict"): PREDICT}
