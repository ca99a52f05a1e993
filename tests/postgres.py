"""A real PostgreSQL server for the audit tests: initdb in a temporary directory, started on a
free loopback port, stopped at the end (on failure too). PostgreSQL comes from Debian
(``apt-get install postgresql``, which .ci/run does); without its binaries the tests skip
locally and fail in CI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(os.environ.get("CHARGECAST_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(*args: str) -> list[str]:
    """Commands run as the postgres user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


class Postgres:
    """One server: ``url`` to connect; ``stop(mode)`` and ``start()`` to take it down and up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(_as_postgres(*args), capture_output=True, text=True, timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self.sock.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sock} -c fsync=off -c max_connections=50"
        self._run(str(BIN / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "stop", "-w", "-D", str(self.data), "-m", mode)

    def _pids(self) -> list[int]:
        """The postmaster and every process it started (its backends, checkpointer, ...)."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        return [main, *map(int, children)]

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open and nothing answers (a hung database)."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)

    def running(self) -> bool:
        done = subprocess.run(
            _as_postgres(str(BIN / "pg_ctl"), "status", "-D", str(self.data)), capture_output=True, check=False
        )
        return done.returncode == 0

    def fresh_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    if not (BIN / "initdb").is_file():
        message = f"PostgreSQL binaries not found in {BIN} (apt-get install postgresql; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="chargecast-pg-"))
    os.chmod(root, 0o755)
    server = Postgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.data.exists() and server.running():
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


_counter = iter(range(1, 1_000_000))


def database_name() -> str:
    return f"audit_{os.getpid()}_{int(time.time() * 1000) % 10**8}_{next(_counter)}"
