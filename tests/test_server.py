"""``chargecast serve`` as real processes: readiness, metrics across workers, SIGTERM.

Each test starts the server on 127.0.0.1 at a free port and stops it in a ``finally``
(SIGTERM, then SIGKILL if it lingers), so no process outlives its test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from chargecast.settings import Settings

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
RECORD = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
CSV_HEADER = b"age,sex,bmi,children,smoker,region\n"
CSV_ROWS = b"39,female,30.4,1,no,southeast\n52,male,34.1,3,yes,northwest\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    tmp: Path
    metrics_port: int
    readiness: list[str] = field(default_factory=list)  # what /readyz said, in order, from the start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_bytes().splitlines():
            if line.startswith(b"{"):
                out.append(orjson.loads(line))
        return out


def _readyz(port: int) -> str:
    try:
        return str(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code)
    except httpx.TransportError:
        return "refused"


@contextmanager
def serving(
    tmp_path: Path, args: list[str], env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[Server]:
    """Start ``chargecast serve``, wait until /readyz is 200 (recording what it said before)."""
    port = port or free_port()
    tmp = tmp_path / "tmp"  # the server's TMPDIR: its metrics directory must be gone afterwards
    tmp.mkdir(exist_ok=True)
    log = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp), **(env or {})}
    cmd = [sys.executable, "-m", "chargecast.cli", "serve", *args]
    if "CHARGECAST_PORT" not in (env or {}):
        cmd += ["--port", str(port)]
    metrics_port = int((env or {}).get("CHARGECAST_METRICS_PORT", 0)) or free_port()
    if "CHARGECAST_METRICS_PORT" not in (env or {}):
        cmd += ["--metrics-port", str(metrics_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log, tmp, metrics_port)
    try:
        deadline = time.monotonic() + 60
        while not server.readiness or server.readiness[-1] != "200":
            assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server never became ready:\n{log.read_text()}"
            server.readiness.append(_readyz(port))
            time.sleep(0.005)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_readiness_goes_from_unready_to_ready(tmp_path: Path, model_dir: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        assert server.readiness[0] in ("refused", "503"), server.readiness
        assert server.readiness[-1] == "200"
        assert set(server.readiness) <= {"refused", "503", "200"}
        health = httpx.get(f"{server.url}/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}


def test_metrics_add_up_across_two_workers(tmp_path: Path, model_dir: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        sent = 0
        pids: set[object] = set()
        statuses: list[int] = []

        def burst(n: int) -> None:
            # A new connection per request, from several threads, so both workers accept some.
            with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
                for _ in range(n):
                    statuses.append(client.post(f"{server.url}/api/v1/predict", json=RECORD).status_code)

        deadline = time.monotonic() + 60
        while len(pids) < 2:
            assert time.monotonic() < deadline, "every request went to one worker"
            threads = [threading.Thread(target=burst, args=(25,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent += 200
            assert statuses == [200] * sent
            time.sleep(0.3)  # workers write access lines and metric tallies every 0.1 s
            pids = {
                line["pid"]
                for line in server.log_lines()
                if line.get("event") == "request" and line.get("route") == "/api/v1/predict"
            }
        bad = httpx.post(f"{server.url}/api/v1/predict", json={**RECORD, "age": 5})
        assert bad.status_code == 422
        route = 'method="POST",route="/api/v1/predict"'
        expected = {
            f'chargecast_http_requests_total{{{route},status="200"}}': sent,
            f'chargecast_http_requests_total{{{route},status="422"}}': 1,
            f'chargecast_http_request_duration_seconds_count{{{route},status="200"}}': sent,
            'chargecast_predictions_total{endpoint="api"}': sent,
            "chargecast_predicted_charges_count": sent,
            "chargecast_input_age_count": sent,
            'chargecast_input_category_total{feature="sex",value="female"}': sent,
        }
        deadline = time.monotonic() + 10
        while True:  # every worker's tallies reach the shared files within a flush period
            text = httpx.get(server.metrics_url).text
            found = {name: metric(text, name) for name in expected}
            if found == expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert found == expected
        info = [line for line in text.splitlines() if line.startswith("chargecast_model_info{")]
        assert len(info) == 1
        assert info[0].endswith(" 1.0")
        access = [line for line in server.log_lines() if line.get("event") == "request"]
        assert {"request_id", "route", "status", "duration_ms", "model_version"} <= set(access[0])


def test_sigterm_finishes_the_in_flight_request_then_exits(tmp_path: Path, model_dir: Path) -> None:
    rows = 100_000
    body = CSV_HEADER + CSV_ROWS * (rows // 2)
    half = len(body) // 2
    sent_first_half, release = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def upload() -> Iterator[bytes]:
        yield body[:half]
        sent_first_half.set()
        assert release.wait(30)
        yield body[half:]

    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:

        def client() -> None:
            try:
                response = httpx.post(
                    f"{server.url}/api/v1/predict/csv",
                    content=upload(),
                    headers={"Content-Type": "text/csv"},
                    timeout=60,
                )
                result["status"] = response.status_code
                result["lines"] = response.text.count("\n")
                result["last"] = response.text.rstrip("\n").rsplit("\n", 1)[-1]
            except Exception as exc:  # reported by the main thread's asserts
                result["error"] = repr(exc)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            assert sent_first_half.wait(10)
            series = 'chargecast_http_requests_in_progress{route="/api/v1/predict/csv"}'
            deadline = time.monotonic() + 10
            while metric(httpx.get(server.metrics_url).text, series) < 1:  # the request is in a worker
                assert time.monotonic() < deadline, "the upload never reached a worker"
                time.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            terminated = time.monotonic()
            time.sleep(0.7)  # the supervisor reacts within 0.5 s
            with pytest.raises(httpx.TransportError):  # no longer accepting
                httpx.get(f"{server.url}/healthz", timeout=2)
            release.set()
            thread.join(30)
            assert not thread.is_alive()
            assert result.get("status") == 200, result
            assert result["lines"] == rows + 1
            assert str(result["last"]).startswith("52,male,34.1,3,yes,northwest,")
            code = server.proc.wait(timeout=max(0.1, 10 - (time.monotonic() - terminated)))
            assert time.monotonic() - terminated < 10
            assert code == 0
            assert not list(server.tmp.glob("chargecast-*")), "metrics directory left behind"
        finally:
            release.set()
            thread.join(30)


def test_settings_from_the_environment_one_worker_with_api_keys(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    env = {
        "CHARGECAST_MODEL_DIR": str(model_dir),
        "CHARGECAST_PORT": str(port),
        "CHARGECAST_WORKERS": "1",
        "CHARGECAST_API_KEYS": "first-key,second-key",
    }
    with serving(tmp_path, [], env=env, port=port) as server:
        url = f"{server.url}/api/v1/predict"
        assert httpx.post(url, json=RECORD).status_code == 401
        assert httpx.post(url, json=RECORD, headers={"Authorization": "Bearer second-key"}).status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 404  # operators' port only
        assert httpx.get(server.metrics_url).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
    assert not list(server.tmp.glob("chargecast-*"))


def test_serve_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chargecast.cli", "serve", "--model", str(tmp_path), "--port", str(free_port())],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert re.search(r"metadata\.json: not found", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_default_to_their_own_port_9090_as_documented() -> None:
    """The manifests, the PodMonitoring and the README name 9090; the default must be the same."""
    assert Settings().metrics_port == 9090
    assert Settings().metrics_port != Settings().port
    deployment = (SRC.parent / "deploy" / "k8s" / "base" / "deployment.yaml").read_text()
    assert "containerPort: 9090" in deployment


def test_the_ready_gauge_says_what_readyz_says(tmp_path: Path, model_dir: Path) -> None:
    """chargecast_ready (one series per worker) is 1 exactly for the workers that answer /readyz
    200, so the readiness alerts watch real readiness, not a constant."""
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        deadline = time.monotonic() + 30
        while True:
            lines = [
                line for line in httpx.get(server.metrics_url).text.splitlines() if line.startswith("chargecast_ready{")
            ]
            if (len(lines) == 2 and all(line.endswith(" 1.0") for line in lines)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(lines) == 2, lines  # one per worker, each labelled with its pid
        assert all(line.endswith(" 1.0") for line in lines), lines
        for _ in range(10):  # whichever worker a connection lands on, it says ready
            assert httpx.get(f"{server.url}/readyz").status_code == 200


def _get_on(sock: socket.socket) -> bytes:
    """One whole response on an open connection (its head and its Content-Length of body)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    return data


def _length(data: bytes) -> int:
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", data)
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("keepalive", [1, 30])
def test_idle_keep_alive_connections_close_after_the_setting(tmp_path: Path, model_dir: Path, keepalive: int) -> None:
    """Behind Google's load balancer (600 s of reuse) the gke overlay sets 620; uvicorn's own 5 s
    would close connections the load balancer still counts on. A 1 s setting closes an idle
    connection within 3 s; a 30 s one keeps it for the next request."""
    env = {"CHARGECAST_WORKERS": "1", "CHARGECAST_KEEPALIVE_SECONDS": str(keepalive)}
    with (
        serving(tmp_path, ["--model", str(model_dir)], env=env) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        assert _get_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(3)
        if keepalive == 1:
            assert sock.recv(1) == b"", "the server should have closed the idle connection"
        else:
            assert _get_on(sock).startswith(b"HTTP/1.1 200")


def test_a_keep_alive_past_its_limit_is_refused_naming_the_variable(tmp_path: Path, model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "CHARGECAST_KEEPALIVE_SECONDS": "3601"}
    done = subprocess.run(
        [sys.executable, "-m", "chargecast.cli", "serve", "--model", str(model_dir), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CHARGECAST_KEEPALIVE_SECONDS" in done.stderr
    assert "3600" in done.stderr
    assert "Traceback" not in done.stderr
