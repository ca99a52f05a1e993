"""The floor for the serving benchmark: a bare Starlette app that answers a constant.

It reads no body and validates nothing, so it measures uvicorn + Starlette alone on the
same worker count; ``serve_bench.py`` reports chargecast's throughput as a share of it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = (
    b'{"charges":7903.509409918925,"interval":{"low":5526.084131472034,"high":7903.509409918925,"level":0.9},'
    b'"model_version":"constant"}'
)


async def constant(request: Request) -> Response:
    return Response(ANSWER, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(
        routes=[Route("/api/v1/predict", constant, methods=["POST"]), Route("/readyz", ready, methods=["GET"])]
    )
