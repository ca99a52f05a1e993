"""Identity-Aware Proxy's signed header, checked by the app itself (``CHARGECAST_IAP_AUDIENCE``).

IAP in front of the load balancer signs every request it lets through with an ES256 JWT in
``x-goog-iap-jwt-assertion``. Checking it here means a request that reached the pods some other
way (a misrouted Service, a pod-network neighbour) gets nothing: every path but the probes
(GKE's health checks and the kubelet never pass through IAP) needs a token that is ES256,
signed by a key of IAP's JWKS, issued by ``https://cloud.google.com/iap`` for exactly this
audience, and current (exp and iat with 60 s leeway). The verified ``email`` becomes the
request's caller, which the audit log and the access log record.

Keys come from a JWKS file or URL, held in memory; an unknown ``kid`` re-reads them (at most
every ``REFRESH_SECONDS``, one fetch at a time, in a thread with a timeout), so a key rotation
is picked up and a flood of made-up kids is not a flood of fetches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio.to_thread
import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

import chargecast
from chargecast.schema import Issue
from chargecast.serving.audit import CALLER
from chargecast.serving.errors import ApiError
from chargecast.serving.transport import error_response, header

ISSUER: Final = "https://cloud.google.com/iap"
HEADER: Final = "x-goog-iap-jwt-assertion"
ALGORITHM: Final = "ES256"
PROBES: Final = frozenset({"/healthz", "/readyz"})  # health checks and the kubelet do not pass through IAP
LEEWAY_SECONDS: Final = 60
FETCH_TIMEOUT: Final = 5.0  # seconds one JWKS fetch may take
REFRESH_SECONDS: Final = 10.0  # the soonest keys are re-read after the last attempt (unknown kid, failure)
MAX_AGE_SECONDS: Final = 3600.0  # keys older than this are re-read in the background (revoked keys drop out)
CACHE_TOKENS: Final = 4096  # verified tokens remembered until their exp: IAP resends one per session
CACHE_SECONDS: Final = 600.0  # but no longer than IAP's own token lifetime, whatever the exp says
REQUIRED: Final = ["exp", "iat", "iss", "aud", "sub", "email"]

log = logging.getLogger("chargecast.serving.app")


class JwksError(Exception):
    """IAP's public keys cannot be read, or hold no ES256 key."""


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in {"http", "https"}


def _parse(data: Any, where: str) -> dict[str, jwt.PyJWK]:
    """The usable ES256 (P-256) keys of a JWKS document, by kid; anything else in it is ignored."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError(f"{where}: not a JWKS document (a JSON object with a 'keys' list)")
    keys = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        if not isinstance(entry.get("kid"), str) or entry.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, ALGORITHM)
        except jwt.PyJWTError:
            continue
    if not keys:
        raise JwksError(f"{where}: holds no ES256 (EC P-256) key with a kid")
    return keys


def read_keys(source: str, timeout: float = FETCH_TIMEOUT) -> dict[str, jwt.PyJWK]:
    """Read the JWKS (blocking: call it from a thread once serving)."""
    name = f"CHARGECAST_IAP_JWKS {source}"
    if is_url(source):
        client = jwt.PyJWKClient(
            source, cache_keys=False, cache_jwk_set=False, timeout=timeout,
            headers={"User-Agent": f"chargecast/{chargecast.__version__}"},
        )  # fmt: skip
        try:
            data = client.fetch_data()
        except (jwt.PyJWTError, OSError) as exc:  # PyJWT lets a connection reset mid-body through
            raise JwksError(f"{name}: cannot fetch ({exc})") from None
        except ValueError as exc:  # a 200 that is not JSON: a proxy's error page, say
            raise JwksError(f"{name}: not JSON ({exc})") from None
        return _parse(data, name)
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except OSError as exc:
        raise JwksError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise JwksError(f"{name}: not JSON ({exc})") from None
    return _parse(data, name)


def check_source(source: str) -> None:
    """At start: a JWKS file must be readable and hold a key; a URL is fetched on first use."""
    if not is_url(source):
        read_keys(source)


class Jwks:
    """IAP's public keys by kid, re-read when a token names one not seen yet."""

    def __init__(
        self,
        source: str,
        timeout: float = FETCH_TIMEOUT,
        refresh_seconds: float = REFRESH_SECONDS,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self.source = source
        self.timeout = timeout
        self.refresh_seconds = refresh_seconds
        self.max_age = max_age
        self.keys: dict[str, jwt.PyJWK] = {}
        self.error: str | None = None  # why the last read failed, while it has not succeeded since
        self.fetches = 0
        self._attempted = self._loaded = -float("inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        if not is_url(source):  # a file is read now, so a broken one fails the start
            self.keys = read_keys(source)
            self._attempted = self._loaded = time.monotonic()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``; an unknown one re-reads the keys first (rate-limited)."""
        found = self.keys.get(kid)
        if found is not None:
            if time.monotonic() - self._loaded > self.max_age and self._background is None:
                self._background = asyncio.create_task(self._refresh_in_background())
            return found
        await self.refresh()
        found = self.keys.get(kid)
        if found is not None:
            return found
        if not self.keys:  # nothing to check against: the service's fault, not the caller's
            raise ApiError(
                503,
                "cannot check the IAP assertion: IAP's public keys are unavailable; retry shortly",
                [Issue(HEADER, "cannot be checked now")],
                {"Retry-After": "5"},
            )
        raise _refused(f"is signed by key {kid[:64]!r}, which is not one of IAP's public keys")

    async def refresh(self) -> None:
        """Re-read the keys off the event loop: one read at a time, none sooner than ``refresh_seconds``."""
        async with self._lock:
            if time.monotonic() - self._attempted < self.refresh_seconds:
                return  # another request just read them (or failed to): use that
            self._attempted = time.monotonic()
            self.fetches += 1
            try:
                keys = await anyio.to_thread.run_sync(read_keys, self.source, self.timeout)
            except JwksError as exc:
                self.error = str(exc)
                log.warning("IAP keys not refreshed", extra={"fields": {"error": self.error}})
                return
            self.keys, self.error, self._loaded = keys, None, time.monotonic()

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        finally:
            self._background = None


def _refused(rule: str) -> ApiError:
    return ApiError(401, f"not admitted by Identity-Aware Proxy: the {HEADER} header {rule}", [Issue(HEADER, rule)])


def _kid(token: str) -> str:
    """The token's key id, once its header says ES256: alg confusion is refused before any key is used."""
    try:
        head = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _refused("is not a JWT") from None
    alg = head.get("alg")
    if alg != ALGORITHM:
        raise _refused(f"must be signed with {ALGORITHM}, not {str(alg)[:16]!r}")
    kid = head.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refused("names no key (kid)")
    return kid


def _reason(exc: jwt.PyJWTError) -> str:
    """What was wrong with a token, in words; the exception types are PyJWT's."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return f"has expired (exp is over {LEEWAY_SECONDS} s ago)"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return f"is not valid yet (iat or nbf is over {LEEWAY_SECONDS} s ahead)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "is for another audience (aud is not this service's backend)"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"has the wrong issuer (iss must be {ISSUER})"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "has a signature that does not verify"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "has an iat that is not a number"
    if isinstance(exc, jwt.DecodeError):  # PyJWT's words name the claim, e.g. "exp ... must be an integer"
        return f"is not a valid IAP assertion ({str(exc)[:120]})"
    return f"is not a valid IAP assertion ({type(exc).__name__})"


class Iap:
    """One worker's IAP check: the audience, the keys, and tokens already verified."""

    def __init__(self, audience: str, jwks: Jwks) -> None:
        self.audience = audience
        self.jwks = jwks
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (email, exp)

    async def identify(self, scope: Scope) -> str:
        """The verified email of the request's IAP assertion; an :class:`ApiError` otherwise."""
        token = header(scope, HEADER.encode())
        if token is None:
            raise _refused("is missing (this service is reached through Identity-Aware Proxy)")
        known = self._verified.get(token)
        if known is not None and time.time() <= known[1] + LEEWAY_SECONDS:
            return known[0]
        key = await self.jwks.key(_kid(token))
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[ALGORITHM], audience=self.audience, issuer=ISSUER,
                leeway=LEEWAY_SECONDS, options={"require": REQUIRED, "strict_aud": True},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise _refused(_reason(exc)) from None
        email = claims["email"]
        if not isinstance(email, str) or not email:
            raise _refused("has an email claim that is not a string")
        if len(self._verified) >= CACHE_TOKENS:
            self._verified.clear()
        # min() compares without converting: an exp too large for a float must not be a 500
        self._verified[token] = (email, min(claims["exp"], time.time() + CACHE_SECONDS))
        return email


class IapGate:
    """ASGI: every request but the probes passes :meth:`Iap.identify` first; its email is the caller."""

    def __init__(self, app: ASGIApp, iap: Iap) -> None:
        self.app = app
        self.iap = iap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBES:
            try:
                scope[CALLER] = await self.iap.identify(scope)
            except ApiError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
