"""All settings in one validated place: defaults, overridden by ``CHARGECAST_*`` env vars."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CANONICAL_DATA_URL = "https://raw.githubusercontent.com/pycaret/datasets/main/data/common/insurance.csv"
CANONICAL_DATA_SHA256 = "6e3894cf7d9210613f62c866684055decea694345cd4f244ecd7167041578c68"
IAP_JWKS_URL = "https://www.gstatic.com/iap/verify/public_key-jwk"
IAP_AUDIENCE = re.compile(r"/projects/[0-9]+/[A-Za-z0-9/_.-]+")
KEY_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PATIENT_KEY_BYTES = 16


class Settings(BaseSettings):
    """Typed settings; every field can be set as ``CHARGECAST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CHARGECAST_", extra="ignore")

    data: Path | None = Field(default=None, description="Training CSV; when unset the canonical file is downloaded.")
    data_url: str = Field(default=CANONICAL_DATA_URL, description="Where the canonical data set is downloaded from.")
    data_sha256: str = Field(default=CANONICAL_DATA_SHA256, pattern=r"^[0-9a-f]{64}$")
    cache_dir: Path = Field(default_factory=lambda: platformdirs.user_cache_path("chargecast"))
    download_timeout: float = Field(default=30.0, gt=0)
    model_dir: Path = Field(default=Path("models/current"), description="The model artifact directory to serve.")

    # -- serving (``chargecast serve``) ----------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes; each loads the model once.")
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest JSON or form body; bigger ones get 413 (use the CSV route)."
    )
    csv_max_bytes: int = Field(default=16 << 20, ge=1024, description="Largest CSV upload in bytes.")
    csv_upload_timeout: float = Field(default=60.0, gt=0, description="Seconds a CSV upload may take to arrive.")
    csv_max_rows: int = Field(default=250_000, ge=1, description="Most data rows in one CSV request.")
    # Comma- or whitespace-separated, so a Kubernetes Secret can hold several keys during rotation.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="When set, every route returning forecasts or model details needs 'Authorization: Bearer <key>'.",
    )
    # Kept so deployments that set it still start: with API keys set, every route that returns a
    # forecast needs one, the form included, so the only meaningful value left is true.
    form_requires_key: bool = Field(
        default=True,
        description="Deprecated: with API keys set the form always needs one; false is refused then.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port for /metrics (operators only; never on the public port); 0 serves no metrics.",
    )
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="When set, serve the model only if its metadata.json has this sha256 (pins a version).",
    )
    model_public_key: Path | None = Field(
        default=None,
        description="PEM file of an Ed25519 public key: when set, serve and predict use only a model whose "
        "metadata.json.sig it verifies (docs/signing.md).",
    )
    # -- Identity-Aware Proxy in front (docs/iap.md)
    iap_audience: str | None = Field(
        default=None,
        description="When set, every request but /healthz and /readyz needs IAP's signed header for this "
        "audience, such as /projects/NUMBER/global/backendServices/ID.",
    )
    iap_jwks: str = Field(
        default=IAP_JWKS_URL,
        description="IAP's public keys: a JWKS file, or an https URL (http only to this machine).",
    )
    # -- what one connection and one worker may hold (see README "Limits and the memory budget")
    worker_memory_budget: int = Field(
        default=96 << 20,
        ge=4 << 20,
        description="Bytes each worker may hold for requests at once (bodies, parsing, answers); beyond it, 503.",
    )
    head_max_bytes: int = Field(default=32 << 10, ge=1024, le=1 << 20, description="Largest request head (431).")
    head_max_count: int = Field(default=100, ge=8, le=1000, description="Most headers in one request (431).")
    head_timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds a request head may take (408).")
    body_min_rate: int = Field(
        default=32 << 10, ge=1, description="Bytes/s a body must average after its grace period (408)."
    )
    body_grace: float = Field(default=5.0, ge=0, le=300, description="Seconds before the body rate is enforced.")
    send_timeout: float = Field(
        default=15.0, gt=0, le=600, description="Seconds a client may take none of its answer before it is reset."
    )
    max_connections: int = Field(default=128, ge=1, le=100_000, description="Open connections per worker.")
    send_buffer: int = Field(
        default=64 << 10, ge=4096, le=64 << 20, description="Kernel send buffer per connection (SO_SNDBUF)."
    )
    # Google's load balancers keep idle connections to a backend for 600 s; a server that closes
    # one first races the next request on it, which the load balancer answers with a 502.
    keepalive_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Seconds an idle keep-alive connection stays open (over 600 behind Google's load balancer).",
    )
    shutdown_timeout: int = Field(
        default=8, ge=1, le=60, description="Seconds in-flight requests get after SIGTERM before being cancelled."
    )

    # -- the audit log (docs/audit.md) ----------------------------------------------------
    audit_url: str = Field(
        default="off",
        description="Where audit records go: off, sqlite:///path, postgresql://… or file:///dir (JSON Lines).",
    )
    # 12,000 records of at most 1.25 KiB each (serving.audit.QUEUED_RECORD_BYTES): 15 MiB per worker,
    # counted in docs/limits.md's pod arithmetic; about 1 s of one worker's full load.
    audit_queue_size: int = Field(default=12_000, ge=1, description="Records a worker queues in memory.")
    audit_flush_seconds: float = Field(
        default=0.2, gt=0, le=10, description="How often queued records are written (what kill -9 can lose)."
    )
    audit_batch_size: int = Field(default=5000, ge=1, le=100_000, description="Records per write to the store.")
    audit_spool_dir: Path | None = Field(
        default=None, description="Where records wait while the store is down; default $TMPDIR/chargecast-audit-spool."
    )
    audit_spool_max_bytes: int = Field(
        default=256 << 20, ge=1, description="Most bytes spooled on disk; records beyond it are dropped (and counted)."
    )
    audit_patient_key: SecretStr | None = Field(
        default=None, description="HMAC key for patient_ref (at least 16 bytes); only its HMAC is stored."
    )
    audit_patient_key_file: Path | None = Field(default=None, description="A file holding that key (a Secret).")
    # -- monitoring (docs/monitoring.md) ----------------------------------------------------
    monitor_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds between a worker's updates of the drift and coverage gauges.",
    )
    monitor_window_hours: float = Field(
        default=24.0, gt=0, le=24 * 366, description="Hours of logged forecasts the gauges watch."
    )
    monitor_max_records: int = Field(
        default=20_000, ge=100, le=1_000_000, description="Most recent records the gauges read per update."
    )
    drift_thresholds: str = Field(
        default="", description="Per-feature drift thresholds, e.g. 'age=0.15, region.psi=0.3' (docs/monitoring.md)."
    )

    @field_validator("audit_url")
    @classmethod
    def _audit_url(cls, value: str) -> str:
        from chargecast.audit.store import parse_url

        parse_url(value)  # AuditUrlError is a ValueError: pydantic names the variable
        return value.strip()

    @field_validator("drift_thresholds")
    @classmethod
    def _drift_thresholds(cls, value: str) -> str:
        from chargecast.monitor.drift import parse_thresholds, split_thresholds

        parse_thresholds(split_thresholds(value))  # a typo fails at start-up, naming the item and its rule
        return value

    @field_validator("iap_audience")
    @classmethod
    def _audience(cls, value: str | None) -> str | None:
        """Checked for shape only: an audience that can never match would refuse every request."""
        if value is not None and not IAP_AUDIENCE.fullmatch(value):
            raise ValueError(
                "must look like /projects/NUMBER/global/backendServices/ID (IAP's audience for the backend); "
                "unset it to turn the IAP check off"
            )
        return value

    @field_validator("iap_jwks")
    @classmethod
    def _jwks_source(cls, value: str) -> str:
        """A URL must be https (the keys decide who gets in); plain http only to loopback, for tests."""
        from urllib.parse import urlsplit

        text = value.strip()
        if not text:
            raise ValueError("must be a JWKS file path or an https URL, not empty (unset it for IAP's own URL)")
        parts = urlsplit(text)
        if parts.scheme == "https" and parts.hostname:
            return text
        if parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}:
            return text
        if parts.scheme in {"http", "https"}:
            raise ValueError("must be an https URL (plain http only to 127.0.0.1, localhost or ::1) or a file")
        if "://" in text:
            raise ValueError("must be an https URL or a JWKS file path")
        return text

    @field_validator("audit_patient_key")
    @classmethod
    def _patient_key_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_PATIENT_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_PATIENT_KEY_BYTES} bytes")
        return value

    @property
    def audit_on(self) -> bool:
        return self.audit_url.lower() != "off"

    def spool_dir(self) -> Path:
        return self.audit_spool_dir or Path(tempfile.gettempdir()) / "chargecast-audit-spool"

    def patient_key(self) -> bytes | None:
        """The HMAC key for patient references, from the variable or its file (surrounding
        whitespace of the file ignored); None when neither is set."""
        if self.audit_patient_key is not None:
            return self.audit_patient_key.get_secret_value().encode()
        if self.audit_patient_key_file is None:
            return None
        key = self.audit_patient_key_file.read_bytes().strip()
        if len(key) < MIN_PATIENT_KEY_BYTES:
            raise ValueError(
                f"CHARGECAST_AUDIT_PATIENT_KEY_FILE {os.fspath(self.audit_patient_key_file)}: "
                f"the key must be at least {MIN_PATIENT_KEY_BYTES} bytes"
            )
        return key

    def keyring(self) -> tuple[tuple[str, bytes], ...]:
        """``(label, key)`` per API key: ``label:key`` entries name themselves; an unlabelled key
        is ``key-`` and the first 8 hex of its sha256. Audit records store the label only."""
        out = []
        for secret in self.api_keys:
            text = secret.get_secret_value()
            label, sep, key = text.partition(":")
            if not sep:
                label, key = "key-" + hashlib.sha256(text.encode()).hexdigest()[:8], text
            out.append((label, key.encode()))
        return tuple(out)

    @field_validator("api_keys")
    @classmethod
    def _labels(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for secret in value:
            label, sep, key = secret.get_secret_value().partition(":")
            if sep and (not KEY_LABEL.fullmatch(label) or not key):
                # never echo the entry: it holds a key
                raise ValueError("a 'label:key' entry needs a label of 1-64 of A-Z a-z 0-9 . _ - and a key after ':'")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k for k in value.replace(",", " ").split() if k)
        return value

    @field_validator("form_requires_key")
    @classmethod
    def _form_is_keyed(cls, value: bool, info: ValidationInfo) -> bool:
        """An open form beside keyed API routes would hand out forecasts without a key: refuse it."""
        if not value and info.data.get("api_keys"):
            raise ValueError(
                "the form can no longer be left open while API keys are set: every route that returns a "
                "forecast needs a key; remove this variable (an identity-aware proxy can add the key for browsers)"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
