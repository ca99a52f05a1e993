"""Hostile HTTP clients on raw sockets, for the fault and container memory tests.

Each client does one bad thing the way an attacker would and reports what the server did
(the status code it answered, or that it closed or reset the connection). They never rely
on a well-behaved HTTP library: the point is to send what such libraries refuse to.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CSV_COLUMNS = b"age,sex,bmi,children,smoker,region,note\n"
CSV_ROW = b"39,female,30.4,1,no,southeast,"


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def csv_of_size(size: int, non_ascii: bool = False, row_bytes: int = 72) -> bytes:
    """A valid CSV of about ``size`` bytes; a ``note`` column pads rows to ``row_bytes``.

    With ``non_ascii`` each note holds one emoji among ASCII letters: one character beyond
    U+FFFF is what makes Python hold a whole decoded text at four bytes per character.
    """
    pad_bytes = row_bytes - len(CSV_ROW) - 1
    pad = "\U0001f600".encode() + b"x" * (pad_bytes - 4) if non_ascii else b"x" * pad_bytes
    row = CSV_ROW + pad + b"\n"
    return CSV_COLUMNS + row * max(1, (size - len(CSV_COLUMNS)) // len(row))


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: chargecast", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def retry_after(answer: bytes) -> float:
    """The Retry-After of an answer's head, in seconds (1 when it has none)."""
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after" and value.strip().isdigit():
            return float(value.strip())
    return 1.0


def status_of(data: bytes) -> int | None:
    """The status code of the first response line in ``data``, if one arrived."""
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data[9:12])


@dataclass
class Outcome:
    """What one hostile client saw: the server's status (if any) and how the connection ended."""

    name: str
    status: int | None = None
    closed: bool = False  # the server closed or reset the connection
    sent: int = 0  # bytes this client managed to send
    seconds: float = 0.0
    error: str | None = None
    tries: int = 0


@dataclass
class Crowd:
    """Hostile clients in threads; ``stop()`` closes every socket they still hold."""

    outcomes: list[Outcome] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, url: str, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf is not None:  # a small receive window: the answer stays on the server's side
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(30)
        sock.connect(address(url))
        with self.lock:
            self.sockets.append(sock)
        return sock

    def start(self, name: str, action: Callable[[Outcome], None]) -> None:
        outcome = Outcome(name)
        self.outcomes.append(outcome)

        def run() -> None:
            start = time.monotonic()
            try:
                action(outcome)
            except OSError as exc:  # reset, broken pipe, refused: the server cut us off
                outcome.closed = True
                outcome.error = type(exc).__name__
            finally:
                outcome.seconds = time.monotonic() - start

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self.wait(10)

    def by_name(self, prefix: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.name.startswith(prefix)]

    # -- the clients ------------------------------------------------------------------------
    def read_answer(self, sock: socket.socket, outcome: Outcome, limit: float) -> None:
        """Wait (up to ``limit`` s) for the server's answer or its close; record which."""
        sock.settimeout(limit)
        try:
            data = sock.recv(64)
        except TimeoutError:
            return
        outcome.status = status_of(data)
        outcome.closed = outcome.status is None

    def never_reader(self, url: str, path: str, body: bytes, content_type: str = "text/csv") -> None:
        """Upload the whole body, then never read the answer (the OOM case of issue #8)."""

        def act(outcome: Outcome) -> None:
            sock = self.connect(url, rcvbuf=4096)
            sock.sendall(request_head("POST", path, {"Content-Type": content_type, "Content-Length": str(len(body))}))
            sock.sendall(body)
            outcome.sent = len(body)
            # Hold the connection, reading nothing, until the server gives up on us (or the test ends).
            while not self.stopping.wait(0.5):
                if _peer_closed(sock, answer_counts=False):
                    outcome.status, outcome.closed = status_of(_peek(sock)), True
                    return

        self.start(f"never-reader {path}", act)

    def uploader(self, url: str, path: str, body: bytes, content_type: str = "text/csv", tries: int = 8) -> None:
        """A legitimate client: upload, read the whole answer; on 503 wait Retry-After and retry."""

        def act(outcome: Outcome) -> None:
            for _ in range(tries):
                sock = self.connect(url)
                head = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"}
                sock.sendall(request_head("POST", path, head) + body)
                outcome.sent = len(body)
                sock.settimeout(120)
                chunks = []
                while chunk := sock.recv(1 << 16):
                    chunks.append(chunk)
                sock.close()
                answer = b"".join(chunks)
                outcome.status = status_of(answer)
                outcome.tries += 1
                if outcome.status != 503 or self.stopping.wait(retry_after(answer)):
                    return

        self.start(f"uploader {path}", act)

    def header_lines(self, url: str, line: bytes = b"X-Filler: 0123456789\r\n", most: int = 1 << 30) -> None:
        """Endless header lines, as fast as the server takes them."""
        self._header_flood("header-lines", url, line, most)

    def header_value(self, url: str, most: int = 64 << 20) -> None:
        """One header whose value never ends."""
        self._header_flood("header-value", url, b"a" * 65536, most, prefix=b"X-Endless: ")

    def _header_flood(self, name: str, url: str, piece: bytes, most: int, prefix: bytes = b"") -> None:
        def act(outcome: Outcome) -> None:
            sock = self.connect(url)
            sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: chargecast\r\n" + prefix)
            while outcome.sent < most and not self.stopping.is_set():
                try:
                    sock.sendall(piece)
                except OSError:
                    outcome.closed = True
                    break
                outcome.sent += len(piece)
            self.read_answer(sock, outcome, 5)

        self.start(name, act)

    def header_drip(self, url: str, every: float = 1.0) -> None:
        """Half a request head, one byte at a time."""

        def act(outcome: Outcome) -> None:
            sock = self.connect(url)
            head = b"GET /healthz HTTP/1.1\r\nHost: chargecast\r\nX-Slow: " + b"z" * 10_000
            for byte in head:
                if self.stopping.wait(every):
                    return
                if _peer_closed(sock):
                    break
                sock.sendall(bytes([byte]))
                outcome.sent += 1
            self.read_answer(sock, outcome, 1)

        self.start("header-drip", act)

    def silent(self, url: str) -> None:
        """Connect and say nothing."""

        def act(outcome: Outcome) -> None:
            sock = self.connect(url)
            while not self.stopping.wait(0.5):
                if _peer_closed(sock):
                    outcome.closed = True
                    return

        self.start("silent", act)

    def body_drip(
        self, url: str, path: str, content_type: str, declared: int, every: float = 1.0, burst: bytes = b""
    ) -> None:
        """Declare a body of ``declared`` bytes, send ``burst`` at once, then one byte per ``every`` s."""

        def act(outcome: Outcome) -> None:
            sock = self.connect(url)
            sock.sendall(request_head("POST", path, {"Content-Type": content_type, "Content-Length": str(declared)}))
            sock.sendall(burst)
            outcome.sent = len(burst)
            while outcome.sent < declared and not self.stopping.wait(every):
                if _peer_closed(sock):
                    data = _recv_ready(sock)
                    outcome.status, outcome.closed = status_of(data), True
                    return
                sock.sendall(b"1")
                outcome.sent += 1

        self.start(f"body-drip {path}", act)


TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # tcpi_state values (include/net/tcp_states.h)


def _peer_closed(sock: socket.socket, answer_counts: bool = True) -> bool:
    """Whether the server answered or closed, peeking so that what it sent stays readable.

    A never-reader is expected to get answer bytes; for it (``answer_counts=False``) only a
    reset or the server's FIN counts, which the socket's TCP state shows even while the
    answer's bytes are still unread in front of it.
    """
    try:
        data = _now(sock, 1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    if not data or answer_counts:
        return True
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (TCP_CLOSE, TCP_CLOSE_WAIT)


def _now(sock: socket.socket, size: int, flags: int = 0) -> bytes:
    """``recv`` that never waits: a socket with a timeout would first poll for that long,
    whatever MSG_DONTWAIT says."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(size, flags)
    finally:
        sock.settimeout(timeout)


def _peek(sock: socket.socket) -> bytes:
    try:
        return _now(sock, 64, socket.MSG_PEEK)
    except OSError:
        return b""


def _recv_ready(sock: socket.socket) -> bytes:
    try:
        return _now(sock, 4096)
    except OSError:
        return b""
