"""The lean supervisor's parts: workers that die with it, honest deaths, drained exits, private metrics.

Imported by the supervisor process (which must stay free of numpy and pydantic: it is
resident for the server's life) and by each worker, which unpickles :class:`Worker`.

- :class:`Worker` asks the kernel to SIGTERM it when the supervisor dies
  (``PR_SET_PDEATHSIG``) and exits at once if the supervisor is already gone, so a killed
  supervisor never leaves workers holding the port.
- :class:`Supervisor` logs a worker's death at ERROR with its signal or exit code, drops the
  dead worker's live gauges, and stops the whole server (non-zero) when a worker could not
  start or could not load the verified model: a restart would fail the same way.
- each worker runs :class:`chargecast.serving.guard.GuardedServer`: connection limits and deadlines,
  and on SIGTERM a wait until the bytes already written have been taken by the clients.
- :func:`metrics_server` serves ``/metrics`` on its own port from the supervisor, merged
  over every worker's files, with patient-input histograms published as bucket counts only.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any, Final

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from chargecast.serving.guard import GuardedServer

log = logging.getLogger("chargecast.serving.supervisor")

PR_SET_PDEATHSIG: Final = 1
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
            self._server = GuardedServer(config=self.config)
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

    def restart_all(self) -> None:
        """SIGHUP: replace each worker with one of ours (dies with the supervisor, guarded), the
        replacement serving before the old one is retired; uvicorn's would start plain workers."""
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._new_worker()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                log.error("a new worker was not ready in time; keeping the old one", extra={"fields": {"pid": old.pid}})
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

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
                # chargecast.serving.app): every replacement would fail the same way. Stop, non-zero.
                log.error("a worker could not start or load the verified model; stopping the server")
                self.exit_code = 1
                self._release()
                self.should_exit.set()
                return
            if self.should_exit.is_set():  # pragma: no cover - told to stop meanwhile
                return
            self.processes[idx] = self._new_worker()


class _Published:
    """A source of metric families as published: patient-value histograms without their sums,
    and no gauge sample that is NaN (a gauge's "unknown", such as coverage without actuals:
    absent, so no dashboard shows it as a number and no alert rule compares it)."""

    def __init__(self, source: Callable[[], Iterable[Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        for family in self.source():
            if family.name.startswith(PRIVATE_PREFIXES):
                family.samples = [s for s in family.samples if not s.name.endswith("_sum")]
            if family.type == "gauge":
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
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
