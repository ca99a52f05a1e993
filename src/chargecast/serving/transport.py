"""ASGI plumbing the routes share: scope keys, headers, a body read within its limits, JSON answers.

This is the only place that reads a body off the wire; what the bytes mean is for the
protocol modules (:mod:`~chargecast.serving.jsonbody`, :mod:`~chargecast.serving.formdata`,
:mod:`~chargecast.serving.csvroute`), which never see ASGI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chargecast.schema import Issue
from chargecast.serving.budget import Lease
from chargecast.serving.errors import ApiError
from chargecast.serving.guard import SLOW_BODY

JSON: Final = "application/json"
# Scope keys set by the request middleware (chargecast.serving.app.Observe) before any route runs.
LEASE: Final = "chargecast.lease"  # the request's hold on its worker's memory budget
SERVICE: Final = "chargecast.service"  # the worker's Service (the model, settings, metrics)
_JSON_TYPE: Final = (b"content-type", JSON.encode())

ParseCost = Callable[[bytes | bytearray], int]


def header(scope: Scope, name: bytes) -> str | None:
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
    declared = header(scope, b"content-length")
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


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A JSON answer straight to ASGI (what Starlette's Response would send, minus its cost)."""
    raw = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers, JSON)


def error_response(exc: ApiError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)
