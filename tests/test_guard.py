"""The HTTP-layer limits and the memory budget, against a real uvicorn server on loopback.

Each case is a client that breaks one limit on a raw socket, and asserts what the server
answers and when; the limits are set small so the suite stays fast. The container test
(tests/test_container.py) runs the same clients at once against the real image.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from starlette.types import Message

import hostile
from chargecast.serving import guard, routes
from chargecast.serving import service as service_module
from chargecast.serving.app import PIECE, create_app
from chargecast.serving.budget import CSV_FIXED, answer_cost, form_cost, json_cost
from chargecast.serving.guard import GuardedHttpProtocol, GuardedServer, HttpLimits, send_queue
from chargecast.serving.service import Service
from chargecast.settings import Settings
from tools import served

LIMITS = HttpLimits(
    head_max_bytes=4096,
    head_max_count=20,
    head_timeout=1.0,
    body_min_rate=20_000,
    body_grace=1.0,
    send_timeout=1.5,
    max_connections=40,
    send_buffer=16384,
)
RECORD = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}


@dataclass
class Running:
    url: str
    service: Service

    @property
    def address(self) -> tuple[str, int]:
        return hostile.address(self.url)


@contextlib.contextmanager
def guarded(model_dir: Path, limits: HttpLimits = LIMITS, **settings: Any) -> Iterator[Running]:
    """The app under GuardedServer with ``limits``, in a thread; stopped on exit."""

    class Protocol(GuardedHttpProtocol):
        pass

    Protocol.limits = limits
    app = create_app(Settings(model_dir=model_dir, log_level="warning", **settings))
    with served(app, GuardedServer, http=Protocol, timeout_graceful_shutdown=2) as url:
        yield Running(url, app.state.service)


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Running]:
    with guarded(model_dir) as running:
        yield running


def connect(running: Running, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(running.address)
    return sock


def answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (or ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answer_or_reset(sock: socket.socket, timeout: float = 10) -> tuple[bytes, bool]:
    """What the server sent before closing, and whether it ended with a reset."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server ends the connection (FIN or RST) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def head(method: str, path: str, **headers: str) -> bytes:
    return hostile.request_head(method, path, headers)


# -- request heads ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "flood",
    [
        b"X-Filler: 0123456789\r\n" * 2000,  # many header lines
        b"X-Endless: " + b"a" * 200_000,  # one value that does not end
        b"\r\n" * 50_000,  # blank lines before the request line, which the parser skips
    ],
    ids=["lines", "value", "leading-blank-lines"],
)
def test_a_head_over_the_limit_is_a_431_before_the_parser_holds_it(server: Running, flood: bytes) -> None:
    sock = connect(server)
    start = b"" if flood.startswith(b"\r\n") else b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    with contextlib.suppress(OSError):  # the server may reset us mid-send: that is the point
        sock.sendall(start + flood)
    reply, reset = answer_or_reset(sock)
    sock.close()
    # The 431 is written before the close; a client still sending may see the reset first.
    assert reply.startswith(b"HTTP/1.1 431") or (reset and not reply), reply[:80]
    if reply:
        assert b"larger than 4096 bytes" in reply


def test_a_head_just_within_the_limits_is_served(server: Running) -> None:
    fill = {f"X-Pad-{i}": "p" * 150 for i in range(18)}  # 19 headers with Host, ~3.2 KB
    sock = connect(server)
    sock.sendall(head("GET", "/healthz", Connection="close", **fill))
    assert answer(sock).startswith(b"HTTP/1.1 200")
    sock.close()


def test_one_header_too_many_is_a_431_naming_the_count(server: Running) -> None:
    sock = connect(server)
    sock.sendall(head("GET", "/healthz", **{f"X-{i}": "1" for i in range(20)}))  # 21 with Host
    reply = answer(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:80]
    assert b"more than 20 headers" in reply


def test_a_silent_connection_is_closed_after_the_head_deadline(server: Running) -> None:
    sock = connect(server)
    start = time.monotonic()
    assert closed_by_server(sock, within=4)
    assert LIMITS.head_timeout <= time.monotonic() - start < LIMITS.head_timeout + 1.5
    sock.close()


def test_a_dripped_head_gets_a_408_at_the_deadline_however_often_it_drips(server: Running) -> None:
    sock = connect(server)
    start = time.monotonic()
    reply = b""
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sock.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            reply = sock.recv(4096)
            if reply:
                break
    elapsed = time.monotonic() - start
    reply += answer(sock, 2)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert elapsed < LIMITS.head_timeout + 1.5


# -- bodies -----------------------------------------------------------------------------
def drip_body(running: Running, path: str, content_type: str, burst: bytes, declared: int) -> tuple[bytes, float]:
    """Send ``burst``, then a byte every 0.1 s; return the answer and when it came."""
    sock = connect(running)
    sock.sendall(head("POST", path, **{"Content-Type": content_type, "Content-Length": str(declared)}) + burst)
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < 20:
        try:
            if data := sock.recv(65536):
                reply = data + answer(sock, 2)
                sock.close()
                return reply, time.monotonic() - start
        except TimeoutError:
            pass
        try:
            sock.sendall(b" ")
        except OSError:
            break
    reply = answer(sock, 2)
    sock.close()
    return reply, time.monotonic() - start


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/api/v1/predict", "application/json"),
        ("/predict_api", "application/json"),
        ("/api/v1/predict/csv", "text/csv"),
        ("/predict", "application/x-www-form-urlencoded"),
        ("/", "application/x-www-form-urlencoded"),
    ],
)
def test_a_dripping_body_is_a_408_when_its_average_rate_falls_behind(
    server: Running, path: str, content_type: str
) -> None:
    burst = b"x" * 40_000  # buys 2 s at 20,000 B/s, on top of 1 s of grace
    reply, elapsed = drip_body(server, path, content_type, burst, 400_000)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    allowed = LIMITS.body_grace + len(burst) / LIMITS.body_min_rate
    assert allowed - 0.2 <= elapsed <= allowed + 2.5, elapsed
    if path not in ("/predict", "/"):  # the form answers a page; the API its JSON error shape
        error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["status"] == 408
        assert error["issues"][0]["field"] == "body"
        assert "20,000 bytes/s" in error["message"]
    assert server.service.budget.used == 0  # what it had sent is given back


def test_a_slow_but_steady_upload_is_served(server: Running) -> None:
    rows = b"".join(b"%d,female,30.4,1,no,southeast\n" % (20 + i % 60) for i in range(3000))
    body = b"age,sex,bmi,children,smoker,region\n" + rows  # ~90 KB at ~40 KB/s: twice the minimum
    sock = connect(server)
    sock.sendall(head("POST", "/api/v1/predict/csv", **{"Content-Type": "text/csv", "Content-Length": str(len(body))}))
    for start in range(0, len(body), 4000):
        sock.sendall(body[start : start + 4000])
        time.sleep(0.1)
    reply = answer(sock, 5)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.count(b"\n") > 3000


def test_drip_feeders_do_not_keep_real_csv_requests_waiting(server: Running) -> None:
    """Six slow uploads hold connections; six real CSV requests from the same address all get 200."""
    crowd = hostile.Crowd()
    try:
        big = hostile.csv_of_size(2 << 20)
        for _ in range(6):
            crowd.body_drip(server.url, "/api/v1/predict/csv", "text/csv", len(big), every=0.5, burst=big[: 1 << 16])
        time.sleep(0.5)
        small = hostile.csv_of_size(50_000)
        csv_type = {"Content-Type": "text/csv"}
        statuses = [
            httpx.post(f"{server.url}/api/v1/predict/csv", content=small, headers=csv_type, timeout=20).status_code
            for _ in range(6)
        ]
        assert statuses == [200] * 6
        crowd.wait(15)
    finally:
        crowd.stop()
    for outcome in crowd.outcomes:
        assert outcome.status == 408, outcome


# -- answers ----------------------------------------------------------------------------
def big_csv_request(rows: int = 60_000) -> bytes:
    body = hostile.csv_of_size(rows * 72)
    return head("POST", "/api/v1/predict/csv", **{"Content-Type": "text/csv", "Content-Length": str(len(body))}) + body


def test_a_client_that_stops_reading_is_reset_and_its_memory_given_back(server: Running) -> None:
    sock = connect(server, rcvbuf=4096)
    request = big_csv_request()
    sock.sendall(request)
    deadline = time.monotonic() + 5
    while server.service.budget.used < len(request) + CSV_FIXED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.service.budget.used > len(request) + CSV_FIXED  # the upload and its scoring are paid for...
    start = time.monotonic()
    deadline = start + LIMITS.send_timeout + 5
    while server.service.budget.used and time.monotonic() < deadline:
        time.sleep(0.1)
    freed = time.monotonic() - start
    assert server.service.budget.used == 0  # ...and given back once the client is cut off
    assert freed >= LIMITS.send_timeout - 0.6
    with pytest.raises(ConnectionResetError):
        _read_all_slowly(sock)
    sock.close()


def _read_all_slowly(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        time.sleep(0.01)


def test_a_slow_reader_that_keeps_reading_gets_every_byte(server: Running) -> None:
    sock = connect(server, rcvbuf=16384)
    sock.sendall(big_csv_request(20_000))
    received = bytearray()
    sock.settimeout(10)
    while chunk := sock.recv(16384):  # ~160 KB/s: slow, but never 1.5 s without taking a byte
        received += chunk
        time.sleep(0.1)
    sock.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"0\r\n\r\n")  # the chunked answer's end
    assert server.service.budget.used == 0


def test_connections_beyond_the_cap_are_refused_and_the_others_still_served(server: Running) -> None:
    held = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        extra = connect(server)
        extra.sendall(head("GET", "/healthz"))
        assert answer(extra, 3) == b""  # reset at once
        extra.close()
        held[0].sendall(head("GET", "/healthz", Connection="close"))
        assert answer(held[0]).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


# -- the memory budget ------------------------------------------------------------------
def test_requests_beyond_the_budget_get_a_503_and_the_rest_are_served(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=12 << 20) as running:
        body = hostile.csv_of_size(6 << 20)
        csv_type = {"Content-Type": "text/csv"}
        reply = httpx.post(f"{running.url}/api/v1/predict/csv", content=body, headers=csv_type, timeout=30)
        assert reply.status_code == 503, reply.text[:200]  # 6 MiB + scoring ~18 MiB > 12 MiB
        assert reply.headers["retry-after"]
        assert "CHARGECAST_WORKER_MEMORY_BUDGET" in reply.text
        small = hostile.csv_of_size(200_000)
        assert httpx.post(f"{running.url}/api/v1/predict/csv", content=small, headers=csv_type).status_code == 200
        assert httpx.post(f"{running.url}/api/v1/predict", json=RECORD).status_code == 200
        assert running.service.budget.used == 0


def test_a_declared_body_that_cannot_fit_is_refused_before_it_is_read(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=8 << 20) as running:
        sock = connect(running)
        # 1 MB of JSON would cost 21 MB to parse: refused on the announcement alone, and the
        # client, still sending, reads the answer (a lingering close, not a reset).
        announced = {"Content-Type": "application/json", "Content-Length": "1000000"}
        sock.sendall(head("POST", "/api/v1/predict", **announced) + b" " * 1_000_000)
        reply = answer(sock, 3)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
        assert running.service.budget.used == 0


def test_an_upload_that_outgrows_the_budget_gets_its_503_not_a_reset(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=4 << 20) as running:
        body = hostile.csv_of_size(8 << 20)

        def chunks() -> Iterator[bytes]:  # no Content-Length: only the bytes themselves tell
            for start in range(0, len(body), 1 << 16):
                yield body[start : start + (1 << 16)]

        reply = httpx.post(f"{running.url}/api/v1/predict/csv", content=chunks(), headers={"Content-Type": "text/csv"})
        assert reply.status_code == 503, reply.text[:200]
        assert reply.json()["error"]["issues"][0]["field"] == "body"
        assert running.service.budget.used == 0


def test_header_bytes_a_connection_can_pin_stay_under_64_kib(model_dir: Path) -> None:
    """Two hundred connections each hold the largest head the server accepts without ending it."""
    limits = replace(LIMITS, head_max_bytes=32 << 10, head_timeout=30.0, max_connections=300)
    with guarded(model_dir, limits) as running:
        socks = []
        try:
            before = _rss_kib()
            for i in range(200):
                sock = connect(running)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad-%d: " % i + b"v" * (32_000))
                socks.append(sock)
            time.sleep(1.0)
            grown = _rss_kib() - before
            assert all(not closed_by_server(s, 0.01) for s in socks[:5])  # still held
        finally:
            for sock in socks:
                sock.close()
    print(f"heads held: {grown / 200:.1f} KiB per connection")
    assert grown / 200 <= 64, f"{grown / 200:.0f} KiB per connection"


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover - not Linux


def test_after_an_early_answer_the_next_head_on_the_connection_is_still_limited(server: Running) -> None:
    """A route that answers without reading its body (405 here) leaves the connection open: the
    rest of that body, then a new head, must not escape the head limit."""
    sock = connect(server)
    sock.sendall(head("POST", "/healthz", **{"Content-Length": "10"}))
    first = b""
    sock.settimeout(3)
    while b"\r\n\r\n" not in first:
        first += sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 405")
    start = time.monotonic()
    with contextlib.suppress(OSError):
        sock.sendall(b"0123456789" + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 200_000)
    rest = answer(sock, 5)
    elapsed = time.monotonic() - start
    sock.close()
    # Cut by the head limit (431), or by the head deadline when the whole head came in one read.
    assert rest.startswith((b"HTTP/1.1 431", b"HTTP/1.1 408")), rest[:80]
    assert elapsed < LIMITS.head_timeout + 1.5


def test_a_socket_the_client_reset_has_nothing_left_to_send() -> None:
    """SIOCOUTQ keeps counting bytes after a reset; send_queue must not, or a drain waits for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    served, _ = listener.accept()
    served.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        served.send(b"x" * (4 << 20))
    assert send_queue(served.fileno()) > 0  # the client has not taken it
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    deadline = time.monotonic() + 3
    while send_queue(served.fileno()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert send_queue(served.fileno()) == 0
    served.close()
    listener.close()


def test_a_body_dripped_after_an_early_answer_is_cut_too(server: Running) -> None:
    """A route that answers without reading (405) keeps the connection; a body that then drips
    must still be cut at the rate deadline, or such clients would fill every connection slot."""
    sock = connect(server)
    sock.sendall(head("POST", "/healthz", **{"Content-Length": "100000"}) + b"x" * 100)
    start = time.monotonic()
    sock.settimeout(0.2)
    ended = False
    while time.monotonic() - start < 8 and not ended:
        try:
            ended = sock.recv(65536) == b""
        except TimeoutError:
            pass
        except ConnectionResetError:
            ended = True
        if not ended:
            with contextlib.suppress(OSError):
                sock.send(b"x")
    sock.close()
    assert ended
    assert time.monotonic() - start < LIMITS.body_grace + 100 / LIMITS.body_min_rate + 2


def test_no_csv_slot_within_the_wait_is_a_503_with_retry_after(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "CSV_SLOTS", 0)  # every slot taken, for ever
    monkeypatch.setattr(routes, "CSV_SLOT_WAIT", 0.3)
    with guarded(model_dir) as running:
        start = time.monotonic()
        csv_type = {"Content-Type": "text/csv"}
        reply = httpx.post(f"{running.url}/api/v1/predict/csv", content=hostile.csv_of_size(10_000), headers=csv_type)
        assert reply.status_code == 503, reply.text
        assert reply.headers["retry-after"] == "5"
        assert 0.3 <= time.monotonic() - start < 3
        assert running.service.budget.used == 0


def test_a_refused_body_is_drained_for_ten_seconds_at_most(server: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "LINGER_SECONDS", 1.0)
    sock = connect(server)
    sock.sendall(head("POST", "/api/v1/predict", **{"Content-Type": "application/json", "Content-Length": "9000000"}))
    start = time.monotonic()
    reply = b""
    ended = False
    sock.settimeout(0.05)
    while time.monotonic() - start < 6 and not ended:
        try:
            sock.sendall(b" " * 4096)  # ~80 KB/s: above the minimum rate, so only the drain cap ends it
        except OSError:
            ended = True  # the server stopped reading and reset us
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            reply += sock.recv(65536)  # the answer, then the server's FIN: it reads on regardless
    elapsed = time.monotonic() - start
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:80]  # the client read its answer while still sending
    assert ended
    assert 1.0 <= elapsed < 3.5


def test_a_closed_connection_whose_client_takes_nothing_is_reset(server: Running) -> None:
    """An answer that fits in the kernel's buffers leaves the transport at once; the socket is kept
    for the client to take it, but not for ever: after the send timeout it is reset."""
    body = orjson.dumps([RECORD] * 40)
    sock = connect(server, rcvbuf=4096)
    sock.sendall(
        head(
            "POST",
            "/api/v1/predict?explain=true",
            **{"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"},
        )
        + body
    )
    deadline = time.monotonic() + 3
    while not guard.LINGERING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert guard.LINGERING, "the closed connection was not kept for its client"
    start = time.monotonic()
    while guard.LINGERING and time.monotonic() - start < LIMITS.send_timeout + 3:
        time.sleep(0.05)
    assert not guard.LINGERING
    assert time.monotonic() - start >= LIMITS.send_timeout - 0.7
    with pytest.raises(ConnectionResetError):
        _read_all_slowly(sock)
    sock.close()


# -- what each request pays -------------------------------------------------------------
def test_parsing_json_is_paid_for_before_it_happens(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=4 << 20) as running:
        body = b"[" + b",".join([b"{}"] * 30_000) + b"]"  # 90 KB, ~3.8 MB once parsed
        assert json_cost(body) + len(body) > 4 << 20
        reply = httpx.post(f"{running.url}/api/v1/predict", content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 503, reply.text[:200]
        assert httpx.post(f"{running.url}/api/v1/predict", json=[RECORD] * 10).status_code == 200


def test_an_answer_is_paid_for_before_it_is_built(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=8 << 20) as running:
        levels = ",".join(f"0.{i:02d}" for i in range(1, 100))
        url = f"{running.url}/api/v1/predict?explain=true&quantiles={levels}"
        assert answer_cost(1000, True, 99) > 8 << 20
        assert httpx.post(url, json=[RECORD] * 1000).status_code == 503
        assert httpx.post(url, json=[RECORD] * 20).status_code == 200


def test_a_form_is_paid_for_before_it_is_parsed(model_dir: Path) -> None:
    with guarded(model_dir, worker_memory_budget=4 << 20) as running:
        body = b"age=" + b"1" * 700_000
        assert form_cost(body) + len(body) > 4 << 20
        kind = {"Content-Type": "application/x-www-form-urlencoded"}
        reply = httpx.post(f"{running.url}/predict", content=body, headers=kind)
        assert reply.status_code == 503
        assert "memory" in reply.text


def test_big_answers_leave_in_pieces_so_flow_control_can_hold_them(model: Any, model_dir: Path) -> None:
    """Observe splits a big body into 64 KiB pieces; one transport write of it all would park the
    whole answer in the transport's buffer when the client stops reading."""
    app = create_app(Settings(model_dir=model_dir, log_level="warning"))
    sent: list[Message] = []
    body = orjson.dumps([RECORD] * 2000)

    async def call() -> None:
        async with app.router.lifespan_context(app):
            await app.state.service.wait_for_model()
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> Message:
                return messages.pop() if messages else {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/api/v1/predict",
                "raw_path": b"/api/v1/predict",
                "query_string": b"explain=true",
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                "root_path": "",
                "scheme": "http",
                "server": ("127.0.0.1", 80),
                "client": ("127.0.0.1", 1),
                "http_version": "1.1",
                "asgi": {"version": "3.0"},
            }
            await app(scope, receive, send)

    anyio.run(call)
    pieces = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert sent[0]["status"] == 200
    assert len(pieces) >= 5
    assert max(len(p) for p in pieces) <= PIECE
    assert [m.get("more_body", False) for m in sent[1:]] == [True] * (len(pieces) - 1) + [False]
    assert orjson.loads(b"".join(pieces))["predictions"]
