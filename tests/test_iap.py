"""The app's Identity-Aware Proxy check, against tokens signed with ES256 keys made here.

Servers are real: the app under uvicorn on loopback, JWKS documents from a file and from a
local HTTP server, and one `chargecast serve` process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from chargecast.audit.store import open_store
from chargecast.serving import iap
from chargecast.serving.app import create_app
from chargecast.serving.logs import AccessLog
from chargecast.settings import Settings
from tools import served

AUD = "/projects/123456789/global/backendServices/987654321"
EMAIL = "alice@example.com"
HEADER = "x-goog-iap-jwt-assertion"
RECORD = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
CSV = b"age,sex,bmi,children,smoker,region\n39,female,30.4,1,no,southeast\n"
FORM = "age=39&sex=female&bmi=30.4&children=1&smoker=no&region=southeast"
SRC = Path(__file__).resolve().parents[1] / "src"


# -- keys and tokens ----------------------------------------------------------------------
KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED = ec.generate_private_key(ec.SECP256R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "ES256", "use": "sig"}


def jwks(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(entries)}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": "https://cloud.google.com/iap", "aud": AUD, "iat": now, "exp": now + 600,
        "sub": "accounts.google.com:1234567890", "email": EMAIL, "hd": "example.com",
    }  # fmt: skip
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def token(key: Any = KEY, kid: str = "k1", algorithm: str = "ES256", **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A token PyJWT would refuse to make: HS256 keyed with the public key, or alg none."""
    head = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{head}.{b64(sign(head.encode())) if sign else ''}"


def tampered() -> str:
    head, _, sig = token().split(".")
    payload = b64(json.dumps(claims(email="mallory@example.com")).encode())
    return f"{head}.{payload}.{sig}"


PUBLIC_PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "wrong audience": (lambda: token(aud="/projects/1/global/backendServices/2"), "is for another audience"),
    "list audience": (lambda: token(aud=[AUD, "other"]), "is for another audience"),
    "wrong issuer": (
        lambda: token(iss="https://accounts.google.com"),
        "wrong issuer (iss must be https://cloud.google",
    ),
    "expired": (lambda: token(exp=int(time.time()) - 90, iat=int(time.time()) - 700), "has expired"),
    "issued in the future": (lambda: token(iat=int(time.time()) + 90), "is not valid yet"),
    "HS256 keyed with the public key": (
        lambda: handmade(
            {"alg": "HS256", "kid": "k1", "typ": "JWT"},
            claims(),
            lambda data: hmac.new(PUBLIC_PEM, data, hashlib.sha256).digest(),
        ),
        "must be signed with ES256, not 'HS256'",
    ),
    "alg none": (lambda: handmade({"alg": "none", "kid": "k1"}, claims()), "must be signed with ES256, not 'none'"),
    "RS256": (lambda: token(RSA, algorithm="RS256"), "must be signed with ES256, not 'RS256'"),
    "ES256 by an unknown key": (lambda: token(ROTATED, kid="k9"), "key 'k9', which is not one of IAP's public keys"),
    "ES256 by another key under a known kid": (lambda: token(ROTATED), "signature that does not verify"),
    "tampered payload": (tampered, "signature that does not verify"),
    "no kid": (lambda: jwt.encode(claims(), KEY, algorithm="ES256"), "names no key (kid)"),
    "no email": (lambda: token(email=None), "lacks the 'email' claim"),
    "no exp": (lambda: token(exp=None), "lacks the 'exp' claim"),
    "not a JWT": (lambda: "not-a-token", "is not a JWT"),
}


# -- servers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "iap.jwk"
    other = {"kty": "RSA", "kid": "r1", "n": "sXch", "e": "AQAB"}  # ignored: IAP signs with ES256 only
    path.write_text(json.dumps(jwks(jwk(KEY, "k1"), other)))
    return path


@pytest.fixture(scope="module")
def server(jwks_file: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app behind the IAP check (keys from a file), with the audit log on; yields its URL and store."""
    db = tmp_path_factory.mktemp("audit") / "audit.sqlite3"
    settings = Settings(
        model_dir=model_dir, log_level="warning", iap_audience=AUD, iap_jwks=str(jwks_file),
        audit_url=f"sqlite:///{db}", audit_flush_seconds=0.05, audit_spool_dir=db.parent / "spool",
    )  # fmt: skip
    with served(create_app(settings)) as url:
        yield url, db


def signed(value: str | None = None) -> dict[str, str]:
    return {HEADER: value if value is not None else token()}


ROUTES: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/api/v1/predict", {"json": RECORD}, 200),
    ("POST", "/api/v1/predict/csv", {"content": CSV, "headers": {"content-type": "text/csv"}}, 200),
    ("POST", "/api/v1/predict/csv/summary", {"content": CSV, "headers": {"content-type": "text/csv"}}, 200),
    ("GET", "/api/v1/model", {}, 200),
    ("POST", "/predict_api", {"json": RECORD}, 200),
    ("GET", "/", {}, 200),
    ("POST", "/", {"content": FORM, "headers": {"content-type": "application/x-www-form-urlencoded"}}, 200),
    ("POST", "/predict", {"content": FORM, "headers": {"content-type": "application/x-www-form-urlencoded"}}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/docs", {}, 200),
    ("GET", "/no-such-route", {}, 404),
]


def call(url: str, method: str, path: str, options: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    merged = {**options.get("headers", {}), **headers}
    return httpx.request(method, url + path, **{**options, "headers": merged}, timeout=10)


# -- what is admitted ---------------------------------------------------------------------
def test_probes_are_open_and_every_other_path_needs_the_header(server: tuple[str, Path]) -> None:
    url, _ = server
    for probe in ("/healthz", "/readyz"):
        assert httpx.get(url + probe).status_code == 200  # GKE's health checks and the kubelet carry no token
    for method, path, options, ok in ROUTES:
        refused = call(url, method, path, options, {})
        assert refused.status_code == 401, (method, path, refused.text)
        assert refused.headers["content-type"] == "application/json"
        error = refused.json()["error"]
        assert error["issues"] == [{"field": HEADER, "rule": error["issues"][0]["rule"]}]
        assert "is missing" in error["message"]
        assert refused.headers["cache-control"] == "no-store"  # the common headers still apply
        admitted = call(url, method, path, options, signed())
        assert admitted.status_code == ok, (method, path, admitted.text)


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_each_bad_token_is_a_401_that_says_why(server: tuple[str, Path], case: str) -> None:
    url, _ = server
    make, reason = BAD_TOKENS[case]
    for path in ("/api/v1/predict", "/"):  # the direct hot route and the form alike
        answer = httpx.post(url + path, json=RECORD, headers=signed(make()))
        assert answer.status_code == 401, (case, answer.text)
        assert reason in answer.json()["error"]["message"], (case, answer.json())


def test_sixty_seconds_of_clock_skew_are_allowed(server: tuple[str, Path]) -> None:
    url, _ = server
    now = int(time.time())
    for skewed in (token(exp=now - 30, iat=now - 630), token(iat=now + 30)):
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed(skewed)).status_code == 200


def test_the_verified_email_is_the_caller_in_the_audit_log(server: tuple[str, Path]) -> None:
    url, db = server
    mine = f"iap-caller-{time.monotonic_ns()}"
    who = "bob@example.com"
    answer = httpx.post(
        url + "/api/v1/predict", json=RECORD, headers={**signed(token(email=who)), "x-request-id": mine}
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while True:
        store = open_store(f"sqlite:///{db}")
        try:
            found = [r for r in store.forecasts() if r.client_request_id == mine]
        finally:
            store.close()
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [r.caller for r in found] == [who]


def test_with_api_keys_too_both_are_needed_and_the_person_is_the_caller(jwks_file: Path, model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir,
        log_level="warning",
        iap_audience=AUD,
        iap_jwks=str(jwks_file),
        api_keys="billing:k3y",  # type: ignore[arg-type]  # split by the validator, as from the environment
    )
    app = create_app(settings)
    seen: list[Any] = []
    with served(app) as url:
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed()).status_code == 401  # no key
        keyed = {"authorization": "Bearer k3y"}
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=keyed).status_code == 401  # no IAP
        real = app.state.service.admit

        async def spy(scope: Any) -> Any:
            model = await real(scope)
            seen.append(scope.get("chargecast.caller"))
            return model

        app.state.service.admit = spy
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers={**keyed, **signed()}).status_code == 200
    assert seen == [EMAIL]


def test_the_access_log_names_the_caller_when_one_was_verified() -> None:
    read, write = os.pipe()
    try:
        log = AccessLog("info", fd=write)
        log.write("r1", "POST", "/api/v1/predict", 200, 0.001, "v1", EMAIL)
        log.write("r2", "POST", "/api/v1/predict", 401, 0.001, "v1")
        log.flush()
        first, second = (orjson.loads(line) for line in os.read(read, 65536).splitlines())
    finally:
        os.close(read)
        os.close(write)
    assert first["caller"] == EMAIL
    assert "caller" not in second


# -- keys from a URL ------------------------------------------------------------------------
class JwksServer:
    """A JWKS document served over HTTP on loopback; counts its fetches, can answer slowly.

    ``document`` may be raw bytes (a proxy's error page), or ``RESET`` to cut the connection
    in the middle of the body.
    """

    RESET = b"RESET"

    def __init__(self, document: dict[str, Any] | bytes, delay: float = 0.0) -> None:
        self.document, self.delay, self.fetches = document, delay, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                time.sleep(owner.delay)
                document = owner.document
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                if body == owner.RESET:
                    self.send_response(200)
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"keys": [')
                    self.wfile.flush()
                    linger = struct.pack("ii", 1, 0)  # close with an RST, not a FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (the timeout test)
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/iap/verify/public_key-jwk"

    def __enter__(self) -> JwksServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


@contextlib.contextmanager
def behind_iap(model_dir: Path, source: str, **jwks_options: float) -> Iterator[tuple[str, iap.Jwks]]:
    app = create_app(Settings(model_dir=model_dir, log_level="warning", iap_audience=AUD, iap_jwks=source))
    keys = app.state.service.iap.jwks
    for name, value in jwks_options.items():
        setattr(keys, name, value)
    with served(app) as url:
        yield url, keys


def test_keys_from_a_url_are_fetched_once_and_refetched_for_a_new_kid(model_dir: Path) -> None:
    with JwksServer(jwks(jwk(KEY, "k1"))) as keys_server, behind_iap(model_dir, keys_server.url) as (url, keys):
        assert keys_server.fetches == 0  # nothing fetched until a request needs a key
        for _ in range(5):
            assert httpx.get(url + "/api/v1/model", headers=signed()).status_code == 200
        assert keys_server.fetches == 1  # cached
        # IAP rotates: a token under a kid not seen yet makes one fetch, not one per request
        keys_server.document = jwks(jwk(KEY, "k1"), jwk(ROTATED, "k2"))
        keys.refresh_seconds = 0.2
        time.sleep(0.3)
        assert httpx.get(url + "/api/v1/model", headers=signed(token(ROTATED, kid="k2"))).status_code == 200
        assert keys_server.fetches == 2
        # a flood of made-up kids: at most one fetch per refresh interval
        keys.refresh_seconds = 60
        for i in range(30):
            bogus = token(ROTATED, kid=f"bogus-{i}")
            answer = httpx.get(url + "/api/v1/model", headers=signed(bogus))
            assert answer.status_code == 401
            assert "not one of IAP's public keys" in answer.json()["error"]["message"]
        assert keys_server.fetches <= 3


def test_fetching_keys_never_blocks_the_event_loop_and_has_a_timeout(model_dir: Path) -> None:
    with (
        JwksServer(jwks(jwk(KEY, "k1")), delay=2.0) as keys_server,
        behind_iap(model_dir, keys_server.url, timeout=0.5) as (url, _),
    ):
        result: dict[str, Any] = {}

        def first_request() -> None:
            start = time.monotonic()
            result["answer"] = httpx.get(url + "/api/v1/model", headers=signed(), timeout=10)
            result["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=first_request)
        thread.start()
        time.sleep(0.1)  # the fetch is under way
        start = time.monotonic()
        assert httpx.get(url + "/healthz").status_code == 200
        assert time.monotonic() - start < 0.3  # the loop answered while the keys were being fetched
        thread.join(timeout=10)
        answer = result["answer"]
        assert answer.status_code == 503  # the keys did not arrive in time: the service's fault, not a 401
        assert answer.headers["retry-after"] == "5"
        assert "IAP's public keys are unavailable" in answer.json()["error"]["message"]
        assert result["seconds"] < 1.5  # the fetch timed out at 0.5 s instead of waiting 2 s


def test_unreachable_keys_are_a_503_never_a_500(model_dir: Path) -> None:
    with JwksServer(jwks()) as closed:
        gone = closed.url
    with behind_iap(model_dir, gone) as (url, _):
        answer = httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed())
        assert answer.status_code == 503
        assert httpx.post(url + "/api/v1/predict", json=RECORD).status_code == 401  # no token: still a 401


@pytest.mark.parametrize(
    ("document", "why"),
    [(b"<html>502 Bad Gateway</html>", "not JSON"), (JwksServer.RESET, "cannot fetch"), (b"[1]", "cannot fetch")],
    ids=["an error page", "a reset mid-body", "not an object"],
)
def test_a_key_server_answering_garbage_is_a_503_never_a_500(model_dir: Path, document: bytes, why: str) -> None:
    with JwksServer(document) as keys_server, behind_iap(model_dir, keys_server.url) as (url, keys):
        answer = httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed())
        assert answer.status_code == 503, answer.text
        assert keys.error is not None
        assert why in keys.error
        assert keys_server.fetches == 1


def test_a_validly_signed_but_odd_token_is_never_a_500(server: tuple[str, Path]) -> None:
    """Claims only IAP's key could sign, so odd only if IAP errs; still answered, never a crash."""
    url, _ = server
    far = token(exp=10**400)  # too large for a float
    assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed(far)).status_code == 200
    assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed(far)).status_code == 200  # cached
    words = token(exp="tomorrow")
    answer = httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed(words))
    assert answer.status_code == 401
    assert "Expiration Time claim (exp) must be" in answer.json()["error"]["message"]


# -- start-up: bad settings stop `chargecast serve` with one line ------------------------
def serve_once(env: dict[str, str], model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargecast.cli", "serve", "--model", str(model_dir), "--port", "0",
         "--metrics-port", "0"],
        env={**os.environ, "PYTHONPATH": str(SRC), **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_bad_iap_settings_stop_the_start_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jwk"
    empty.write_text(json.dumps(jwks({"kty": "RSA", "kid": "r1", "n": "sXch", "e": "AQAB"})))
    (tmp_path / "garbage.jwk").write_text("{not json")
    for env, words in (
        ({"CHARGECAST_IAP_AUDIENCE": "my-backend"}, "setting CHARGECAST_IAP_AUDIENCE: Value error, must look like"),
        (
            {"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": "http://keys.example.com/jwk"},
            "setting CHARGECAST_IAP_JWKS: Value error, must be an https URL (plain http only to 127.0.0.1",
        ),
        ({"CHARGECAST_IAP_AUDIENCE": "/projects/1/"}, "setting CHARGECAST_IAP_AUDIENCE: Value error, must look like"),
        ({"CHARGECAST_IAP_AUDIENCE": ""}, "setting CHARGECAST_IAP_AUDIENCE: Value error, must look like"),
        (
            {"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": " "},
            "setting CHARGECAST_IAP_JWKS: Value error, must be",
        ),
        ({"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": "ftp://keys/jwk"}, "CHARGECAST_IAP_JWKS: Value error"),
        ({"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": str(tmp_path / "absent")}, "cannot read"),
        ({"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": str(tmp_path)}, "cannot read"),
        ({"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": str(empty)}, "holds no ES256 (EC P-256) key"),
        ({"CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": str(tmp_path / "garbage.jwk")}, "not JSON"),
    ):
        done = serve_once(env, model_dir)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("chargecast serve: ")
        assert words in line, line


def test_chargecast_serve_checks_iap_in_its_workers(jwks_file: Path, model_dir: Path, tmp_path: Path) -> None:
    """The settings reach the spawned workers: a real server admits a good token only, and logs who called."""
    import socket

    with socket.socket() as s, socket.socket() as m:
        s.bind(("127.0.0.1", 0))
        m.bind(("127.0.0.1", 0))
        port, metrics_port = s.getsockname()[1], m.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "CHARGECAST_IAP_AUDIENCE": AUD, "CHARGECAST_IAP_JWKS": str(jwks_file)}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "chargecast.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "--metrics-port", str(metrics_port), "--workers", "1"], env=env, stdout=fh, stderr=fh
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        assert httpx.post(url + "/api/v1/predict", json=RECORD).status_code == 401
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed(token(aud="x"))).status_code == 401
        assert httpx.post(url + "/api/v1/predict", json=RECORD, headers=signed()).status_code == 200
        # the metrics port is its own, private, server: Prometheus scrapes it without a token
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert "chargecast" in scraped.text
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    requests = [line for line in lines if line.get("event") == "request" and line["route"] == "/api/v1/predict"]
    assert [(r["status"], r.get("caller")) for r in requests] == [(401, None), (401, None), (200, EMAIL)]
