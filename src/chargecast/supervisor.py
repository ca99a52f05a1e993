"""The lean supervisor's parts: workers that die with it, honest deaths, drained exits, private metrics.

Imported by the supervisor process (which must stay free of numpy and pydantic: it is
resident for the server's life) and by each worker, which unpickles :class:`Worker`.

- :class:`Worker` asks the kernel to SIGTERM it when the supervisor dies
  (``PR_SET_PDEATHSIG``) and exits at once if the supervisor is already gone, so a killed
  supervisor never leaves workers holding the port.
- :class:`Supervisor` logs a worker's death at ERROR with its signal or exit code, drops the
  dead worker's live gauges, and stops the whole server (non-zero) when a worker could not
  start or could not load the verified model: a restart would fail the same way.
- :class:`DrainingServer` waits on SIGTERM until the bytes already written have been taken
  by the client (the socket's send queue is empty) or the client is gone, within the grace
  period: a container's network disappears with its last process.
- :func:`metrics_server` serves ``/metrics`` on its own port from the supervisor, merged
  over every worker's files, with patient-input histograms published as bucket counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any, Final

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("chargecast.supervisor")

PR_SET_PDEATHSIG: Final = 1
DRAIN_POLL: Final = 0.05
# Histograms of what patients sent (and what they were told): a diff of two scrapes around one
# request must not give that request's values away, so these publish bucket counts, never a sum.
PRIVATE_PREFIXES: Final = ("chargecast_input_", "chargecast_predicted_charges")


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGTERM this process when ``parent`` dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the getppid check below still runs
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def describe_exit(code: int | None) -> str:
    """``killed by SIGKILL`` or ``exit code 3``: what an operator needs to tell an OOM kill from a bug."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def send_queue(fd: int) -> int:
    """Bytes written to a connected socket that the peer has not acknowledged yet (0 when it is gone)."""
    try:
        out = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on a socket
    except OSError:
        return 0
    return int(struct.unpack("i", out)[0])


try:  # whichever HTTP implementation uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
except ImportError:  # pragma: no cover - httptools is in the lock file
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HttpProtocol  # type: ignore[assignment]

# Duplicates of closed connections' sockets whose send queue was not yet empty (per worker).
LINGERING: list[int] = []


class LingeringHttpProtocol(_HttpProtocol):
    """Keeps a closed connection's socket until the client has taken what was written to it.

    A response "ends" once its bytes are in the kernel's send buffer (megabytes), long before
    a slow client has them. The duplicate lets the worker see that queue (and wait for it on
    SIGTERM); the kernel sends the FIN once the duplicate is closed too.
    """

    def connection_lost(self, exc: Exception | None) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:  # asyncio closes the socket only after this method returns
            with contextlib.suppress(OSError):
                if send_queue(sock.fileno()) > 0:
                    LINGERING.append(os.dup(sock.fileno()))
        super().connection_lost(exc)


def release_taken() -> None:
    """Close the duplicates whose bytes the clients have taken (or that are gone)."""
    if LINGERING:
        for fd in [fd for fd in LINGERING if send_queue(fd) == 0]:
            LINGERING.remove(fd)
            os.close(fd)


class DrainingServer(Server):
    """uvicorn's server, but on shutdown it also waits for the kernel to hand the bytes over."""

    async def on_tick(self, counter: int) -> bool:
        release_taken()  # every 0.1 s; nothing to do unless a closed connection still sends
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket] | None = None) -> None:
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)  # every connection is closed (and lingering) after this
        release_taken()
        if not LINGERING:
            return
        start, pending = time.monotonic(), sum(send_queue(fd) for fd in LINGERING)
        while LINGERING and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL)
            release_taken()
        if LINGERING:
            log.warning(
                "exiting with bytes not yet taken by clients",
                extra={"fields": {"connections": len(LINGERING), "bytes": sum(send_queue(fd) for fd in LINGERING)}},
            )
        else:
            log.info(
                "clients took the last bytes",
                extra={"fields": {"bytes": pending, "seconds": round(time.monotonic() - start, 3)}},
            )


class Worker(Process):
    """A uvicorn worker process that dies with its supervisor and drains on exit."""

    def __init__(self, config: Config, sockets: list[socket], parent: int) -> None:
        self.parent = parent  # set before Process.__init__ pickles ``self.target`` for the child
        super().__init__(config, sockets)

    def target(self, sockets: list[socket] | None = None) -> None:  # pragma: no cover - runs in the child
        die_with_parent(self.parent)
        super().target(sockets)

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class Supervisor(Multiprocess):
    """uvicorn's supervisor with honest worker deaths, live-gauge clean-up and a failing exit code."""

    def __init__(self, config: Config, sockets: list[socket], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.exit_code = 0

    def _new_worker(self) -> Worker:
        worker = Worker(self.config, self.sockets, os.getpid())
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes = [self._new_worker() for _ in range(self.processes_num)]

    def handle_ttin(self) -> None:  # pragma: no cover - uvicorn's scaling signal, kept with our workers
        self.processes_num += 1
        self.processes.append(self._new_worker())

    def _release(self) -> None:
        """Let go of the listening socket as soon as the server is told to stop.

        The workers close their copies on SIGTERM; without this the supervisor's copy would keep
        the port open and new connections would queue unanswered until the process exits,
        instead of being refused at once (so a client or load balancer retries elsewhere).
        """
        for sock in self.sockets:
            sock.close()

    def handle_term(self) -> None:
        self._release()
        super().handle_term()

    def handle_int(self) -> None:
        self._release()
        super().handle_int()

    def bury(self, pid: int | None, code: int | None) -> None:
        """Log a worker's death at ERROR and drop its live gauges (requests in progress)."""
        log.error("worker died", extra={"fields": {"worker_pid": pid, "exit": describe_exit(code), "exit_code": code}})
        if pid is not None:
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            except OSError:  # pragma: no cover - the directory is gone: nothing left to clean
                pass

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # dead already, or hung: either way it is replaced
            process.join()
            self.bury(process.pid, process.exitcode)
            if process.exitcode == STARTUP_FAILURE:
                # It could not start, or could not load the model verified at start-up (see
                # chargecast.app): every replacement would fail the same way. Stop, non-zero.
                log.error("a worker could not start or load the verified model; stopping the server")
                self.exit_code = 1
                self._release()
                self.should_exit.set()
                return
            if self.should_exit.is_set():  # pragma: no cover - told to stop meanwhile
                return
            self.processes[idx] = self._new_worker()


class _Published:
    """A source of metric families as published: patient-value histograms without their sums."""

    def __init__(self, source: Callable[[], Iterable[Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        for family in self.source():
            if family.name.startswith(PRIVATE_PREFIXES):
                family.samples = [s for s in family.samples if not s.name.endswith("_sum")]
            yield family


def render_families(source: Callable[[], Iterable[Any]]) -> bytes:
    """The Prometheus text page for the families ``source`` yields, as published."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Published(source))
    return generate_latest(registry)


def render_metrics(path: str) -> bytes:
    """The page for every worker's files in the shared directory ``path``, merged."""
    from prometheus_client import multiprocess

    return render_families(lambda: multiprocess.MultiProcessCollector(None, path).collect())  # type: ignore[no-untyped-call]


def metrics_server(host: str, port: int, path: str) -> ThreadingHTTPServer:
    """Bind ``/metrics`` on its own port (raises OSError when taken); serve it from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "chargecast-metrics"
        sys_version = ""

        def do_GET(self) -> None:  # http.server's naming
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
                return
            from prometheus_client.exposition import CONTENT_TYPE_LATEST

            self._reply(200, render_metrics(path), CONTENT_TYPE_LATEST)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
