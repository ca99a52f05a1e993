"""Hostile or slow clients against a real server: errors, never a 5xx or a hung route."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chargecast.serving.app import create_app
from chargecast.settings import Settings
from tools import served

RECORD = '"sex":"male","bmi":34.1,"children":2,"smoker":"yes","region":"northwest"'


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    with served(create_app(Settings(model_dir=model_dir, csv_upload_timeout=0.5, log_level="warning"))) as url:
        yield url


@pytest.mark.parametrize("depth", [999, 1023])
def test_deeply_nested_values_are_a_422_not_a_500(server: str, depth: int) -> None:
    body = '{"age":' + "[" * depth + "]" * depth + "," + RECORD + "}"
    for route in ("/api/v1/predict", "/predict_api"):
        reply = httpx.post(server + route, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text
        assert reply.json()["error"]["issues"][0]["field"] == "age"


def test_huge_unknown_field_names_are_not_echoed_in_full(server: str) -> None:
    body = '{"' + "k" * 100_000 + '":1,"age":40,' + RECORD + "}"
    reply = httpx.post(server + "/api/v1/predict", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert len(reply.content) < 2_000


def test_idle_csv_uploads_time_out_and_free_the_route(server: str) -> None:
    """Clients that announce a big CSV and go quiet get a 408; later uploads are served."""
    host, port = server.removeprefix("http://").split(":")
    idle = []
    for _ in range(4):  # more than the worker's CSV slots
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /api/v1/predict/csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 100000\r\n\r\nage,sex,bmi,children,smoker,region\n"
        )
        idle.append(s)
    try:
        time.sleep(0.2)
        csv = "age,sex,bmi,children,smoker,region\n40,male,30,1,no,southeast\n"
        reply = httpx.post(
            server + "/api/v1/predict/csv", content=csv, headers={"content-type": "text/csv"}, timeout=15
        )
        assert reply.status_code == 200, reply.text
        idle[0].settimeout(5)
        answer = idle[0].recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for s in idle:
            s.close()
