"""``chargecast serve`` under faults, as real processes: broken artifacts, killed processes,
files changed under a running server, scrapes diffed for patient data, slow downloads at SIGTERM.

Every test stops what it starts (SIGTERM, then SIGKILL) in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from test_server import CSV_HEADER, RECORD, SRC, Server, free_port, metric, serving

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    """The worker processes of supervisor ``pid``, from /proc (not multiprocessing's resource tracker)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as fh:
            for child in fh.read().split():
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"spawn_main" in cmdline:
                    out.add(int(child))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: it holds no socket any more
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_for(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def workers(server: Server, n: int) -> set[int]:
    """Wait until the supervisor has ``n`` workers and return their pids."""
    found: set[int] = set()

    def enough() -> bool:
        nonlocal found
        found = children(server.proc.pid)
        return len(found) == n

    wait_for(enough, f"{n} workers run")
    return found


def versions(server: Server, n: int = 40) -> set[str]:
    """The model version in ``n`` answers, each on a new connection (so both workers answer some)."""
    seen: set[str] = set()
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10) as client:
        for _ in range(n):
            reply = client.post(f"{server.url}/api/v1/predict", json=RECORD)
            assert reply.status_code == 200, reply.text
            seen.add(reply.json()["model_version"])
    return seen


def kill_workers_and_wait_for_new_ones(server: Server, n: int = 2) -> None:
    old = workers(server, n)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not (children(server.proc.pid) & old) and len(children(server.proc.pid)) == n, "workers replaced")
    wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, "the new workers are ready")


@pytest.fixture
def copy(model_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(model_dir, dest)
    return dest


def _tamper(path: Path) -> None:
    data = bytearray((path / "model.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "model.json").write_bytes(bytes(data))


def _edit_metadata(path: Path, **changes: object) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "tampered byte": (_tamper, "model.json: sha256 does not match"),
    "missing file": (lambda p: (p / "arrays.npz").unlink(), "arrays.npz: listed in metadata.json but missing"),
    "wrong format": (lambda p: _edit_metadata(p, format=1), "artifact format 1 is not supported"),
    "libraries as a list": (
        lambda p: _edit_metadata(p, libraries=["numpy"]),
        "field 'libraries' must be an object",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_artifact_ends_the_start_with_one_line_before_listening(copy: Path, case: str) -> None:
    breaks, message = BROKEN[case]
    breaks(copy)
    port, metrics_port = free_port(), free_port()
    connected: list[int] = []
    stop = threading.Event()

    def knock() -> None:  # would the port ever have taken a connection?
        while not stop.is_set():
            for p in (port, metrics_port):
                try:
                    with socket.create_connection(("127.0.0.1", p), timeout=0.2):
                        connected.append(p)
                except OSError:
                    pass
            time.sleep(0.005)

    knocker = threading.Thread(target=knock)
    knocker.start()
    try:
        cmd = ["serve", "--model", str(copy), "--port", str(port), "--metrics-port", str(metrics_port)]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "chargecast.cli", *cmd],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        knocker.join()
    assert done.returncode == 2, done
    assert elapsed < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("chargecast serve: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert connected == [], "something listened on the ports"


def test_a_restarted_worker_serves_the_verified_version_whatever_the_disk_says(tmp_path: Path, copy: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(copy)]) as server:
        (original,) = versions(server)
        # A valid artifact of another version appears on disk, then the workers are killed.
        _edit_metadata(copy, version="changed-on-disk")
        kill_workers_and_wait_for_new_ones(server)
        assert versions(server) == {original}
        # Now the files on disk break; killed workers come back with the verified version still.
        _tamper(copy)
        (copy / "arrays.npz").unlink()
        kill_workers_and_wait_for_new_ones(server)
        assert versions(server) == {original}
        assert httpx.get(f"{server.url}/readyz").json()["model_version"] == original
        deaths = [line for line in server.log_lines() if line.get("event") == "worker died"]
        assert len(deaths) == 4
        assert {line["level"] for line in deaths} == {"error"}
        assert {line["exit"] for line in deaths} == {"killed by SIGKILL"}
        assert server.proc.poll() is None


def test_a_worker_whose_copy_of_the_model_breaks_stops_the_server_non_zero(tmp_path: Path, copy: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(copy)]) as server:
        (snapshot,) = server.tmp.glob("chargecast-model-*")
        target = snapshot / "model.json"
        target.chmod(0o600)
        target.write_bytes(target.read_bytes()[:-1] + b" ")  # only the server's own user can do this
        for pid in workers(server, 2):
            os.kill(pid, signal.SIGKILL)
        code = server.proc.wait(timeout=20)
        assert code != 0
        events = [(line.get("level"), line.get("event")) for line in server.log_lines()]
        assert ("error", "model failed to load") in events
        assert ("error", "a worker could not start or load the verified model; stopping the server") in events
        assert not list(server.tmp.glob("chargecast-*")), "temporary directories left behind"


def test_killing_the_supervisor_takes_the_workers_and_frees_the_port(tmp_path: Path, model_dir: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        pids = workers(server, 2)
        server.proc.kill()
        server.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), "every worker is gone", seconds=5)
        with socket.socket() as again:  # what a restarted server does with the port
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", server.port))
            again.listen()


def _held_csv_upload(url: str, sent: threading.Event, release: threading.Event, result: dict[str, object]) -> None:
    body = CSV_HEADER + b"39,female,30.4,1,no,southeast\n" * 10_000

    def upload() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        sent.set()
        release.wait(30)
        yield body[len(body) // 2 :]

    try:
        reply = httpx.post(url, content=upload(), headers={"Content-Type": "text/csv"}, timeout=30)
        result["status"] = reply.status_code
    except httpx.HTTPError as exc:
        result["error"] = repr(exc)


def test_a_killed_workers_in_progress_gauge_does_not_stay_up(tmp_path: Path, model_dir: Path) -> None:
    series = 'chargecast_http_requests_in_progress{route="/api/v1/predict/csv"}'
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        sent, release = threading.Event(), threading.Event()
        result: dict[str, object] = {}
        url = f"{server.url}/api/v1/predict/csv"
        thread = threading.Thread(target=_held_csv_upload, args=(url, sent, release, result))
        thread.start()
        try:
            assert sent.wait(10)
            wait_for(lambda: metric(httpx.get(server.metrics_url).text, series) == 1, "the upload is in a worker")
            kill_workers_and_wait_for_new_ones(server)
            wait_for(lambda: metric(httpx.get(server.metrics_url).text, series) == 0, "the gauge drops to 0")
        finally:
            release.set()
            thread.join(30)
        assert "error" in result  # its worker died mid-upload: the client saw the connection drop
        time.sleep(0.3)  # a flush period of the new workers
        assert metric(httpx.get(server.metrics_url).text, series) == 0


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_scrape_diff_does_not_give_one_patients_values_away(tmp_path: Path, model_dir: Path) -> None:
    patient = {**RECORD, "age": 47, "bmi": 33.17, "children": 2}
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 404  # never on the public port
        before = _samples(httpx.get(server.metrics_url).text)
        reply = httpx.post(f"{server.url}/api/v1/predict", json=patient)
        assert reply.status_code == 200
        charges = reply.json()["charges"]
        wait_for(
            lambda: (
                metric(httpx.get(server.metrics_url).text, "chargecast_input_age_count")
                == before.get("chargecast_input_age_count", 0) + 1
            ),
            "the request is counted",
        )
        after = _samples(httpx.get(server.metrics_url).text)
    changed = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name, 0.0)}
    assert changed, "the scrape shows nothing of the request"
    for name, delta in changed.items():
        if name.startswith(("chargecast_input_", "chargecast_predicted_charges")):
            assert delta == 1, (name, delta)  # counts of records, never a value
    for value in (47, 33.17, charges):
        assert not any(abs(delta - value) < 1e-6 for delta in changed.values()), value
    assert not [n for n in after if n.startswith(("chargecast_input_", "chargecast_predicted_")) and "_sum" in n]
    # The narrowest children bucket that counted the patient holds more than one number of children.
    bounds = sorted(
        float(name.split('le="', 1)[1].split('"', 1)[0])
        for name in after
        if name.startswith("chargecast_input_children_bucket")
    )
    counted = [b for b in bounds if changed.get(f'chargecast_input_children_bucket{{le="{b}"}}') == 1]
    below = [b for b in bounds if b < counted[0]]
    low = below[-1] if below else -1.0
    assert counted[0] - low >= 2, (low, counted[0])


class SlowReader:
    """A client that reads its answer at ``rate`` bytes/s through a small receive buffer.

    curl's ``--limit-rate`` reads slowly too, but lets the kernel buffer megabytes for it, so
    on loopback the server's send queue empties at once. With a 64 KiB buffer the tail of the
    answer stays in the server's send queue, where a server that exits early would leave it.
    """

    def __init__(self, port: int, body: bytes, rate: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.connect(("127.0.0.1", port))
        head = (
            f"POST /api/v1/predict/csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        self.rate = rate
        self.received = bytearray()
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        start = time.monotonic()
        self.sock.settimeout(60)
        while chunk := self.sock.recv(16 * 1024):
            self.received += chunk
            ahead = len(self.received) / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(60)

    def answer(self) -> tuple[bytes, bytes]:
        """The status line and the de-chunked body."""
        head, _, rest = bytes(self.received).partition(b"\r\n\r\n")
        body = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return head.split(b"\r\n", 1)[0], bytes(body)


def test_sigterm_lets_a_slow_download_take_every_byte(tmp_path: Path, model_dir: Path) -> None:
    rows = 50_000
    body = CSV_HEADER + b"39,female,30.4,1,no,southeast\n" * rows
    env = {"CHARGECAST_SHUTDOWN_TIMEOUT": "30"}
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)], env=env) as server:
        client = SlowReader(server.port, body, 300_000)
        try:
            wait_for(lambda: len(client.received) > 100_000, "the download is under way")
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(timeout=40)
            had_at_exit = len(client.received)
            client.thread.join(60)
        finally:
            client.close()
    assert code == 0
    status, answer = client.answer()
    assert status == b"HTTP/1.1 200 OK"
    lines = answer.splitlines()
    assert len(lines) == rows + 1
    assert lines[-1].startswith(b"39,female,30.4,1,no,southeast,")
    # When the server exited, all but what fits in the client's small buffers had been read.
    assert had_at_exit > len(client.received) - 512 * 1024, (had_at_exit, len(client.received))
    events = [line for line in server.log_lines() if line.get("logger") == "chargecast.serving.guard"]
    assert not [e for e in events if e["event"] == "exiting with bytes not yet taken by clients"]
    drained = [e for e in events if e["event"] == "clients took the last bytes"]
    assert drained, events


def test_workers_started_by_sighup_still_die_with_the_supervisor(tmp_path: Path, model_dir: Path) -> None:
    """SIGHUP replaces the workers; the replacements must be ours (PR_SET_PDEATHSIG, guarded), not
    uvicorn's plain ones, or a killed supervisor would leave them holding the port."""
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        old = workers(server, 2)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not (children(server.proc.pid) & old) and len(children(server.proc.pid)) == 2, "replaced")
        new = children(server.proc.pid)
        wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, "the new workers serve")
        with socket.create_connection(("127.0.0.1", server.port)) as silent:  # guarded: the head deadline holds
            silent.settimeout(15)
            assert silent.recv(1) == b""  # closed by the server after CHARGECAST_HEAD_TIMEOUT, not left open
        server.proc.kill()
        server.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in new), "the new workers are gone", seconds=5)


def _load(url: str, stop: threading.Event, statuses: list[int | str]) -> None:
    with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            try:
                statuses.append(client.post(f"{url}/api/v1/predict", json=RECORD).status_code)
            except httpx.TransportError as exc:
                statuses.append(type(exc).__name__)


def test_a_worker_killed_under_load_is_replaced_and_the_others_keep_answering(tmp_path: Path, model_dir: Path) -> None:
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)]) as server:
        pids = workers(server, 2)
        stop = threading.Event()
        statuses: list[int | str] = []
        threads = [threading.Thread(target=_load, args=(server.url, stop, statuses)) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(children(server.proc.pid) - {victim}) == 2, "a new worker runs")
            time.sleep(2.0)
            before = len(statuses)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert statuses.count(200) > 100
        answered_badly = [s for s in statuses if isinstance(s, int) and s != 200]
        assert not answered_badly, "only connection drops, never an error answer"
        assert len([s for s in statuses if s != 200]) <= 8  # at most the requests in flight on the dead worker
        assert set(statuses[before:]) == {200}  # after the replacement, everything answers
        deaths = [e for e in server.log_lines() if e.get("event") == "worker died"]
        assert [(e["level"], e["worker_pid"], e["exit"]) for e in deaths] == [("error", victim, "killed by SIGKILL")]
