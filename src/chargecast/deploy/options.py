"""What ``deploy gke`` is asked to do, checked as a whole, and the fixed names of what it creates.

The names are shared with the manifests under deploy/k8s (the Gateway names the IP, the
certificate map and the Cloud Armor policy), so they are constants, not options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chargecast.deploy.names import (
    APP,
    ARMOR_INTERVALS,
    BAN_SECONDS,
    CLIENT_ID,
    domain_error,
    members_error,
    project_error,
)

# Google Cloud resources the Gateway path creates; the gke overlay refers to the first three.
STATIC_IP = f"{APP}-ip"
CERT_MAP = f"{APP}-certmap"
ARMOR_POLICY = f"{APP}-armor"
CERTIFICATE = f"{APP}-cert"
DNS_AUTH = f"{APP}-dns-auth"
CERT_MAP_ENTRY = f"{APP}-entry"
THROTTLE_PRIORITY = "1000"
GSA_NAME = APP
# The Kubernetes side: kubectl's default namespace, the ServiceAccount, the IAP client's Secret.
NAMESPACE = "default"
IAP_SECRET = f"{APP}-iap"
MODEL_KEY_CONFIGMAP = f"{APP}-model-key"  # the public key the pods check the model's signature with

OVERLAY = Path("deploy/k8s/overlays/gke")
LB_OVERLAY = Path("deploy/k8s/overlays/gke-loadbalancer")
CLOUDSQL_COMPONENT = Path("deploy/k8s/components/cloudsql")
IAP_COMPONENT = Path("deploy/k8s/components/iap")
MODEL_KEY_COMPONENT = Path("deploy/k8s/components/model-key")
MODEL = Path("models/current")  # what the Dockerfile bakes into the image

Expose = Literal["gateway", "loadbalancer"]


@dataclass(frozen=True)
class Throttle:
    """The Cloud Armor rule: ``rate`` requests per client IP in any ``interval`` seconds, 429 beyond.

    The interval is the burst: a client may spend its whole allowance at once. With ``ban_seconds``
    a client over the limit is refused everything for that long, not just its excess requests.
    """

    rate: int = 600
    interval: int = 60
    ban_seconds: int = 0

    def __post_init__(self) -> None:
        if self.rate < 1:
            raise ValueError(f"--rate {self.rate}: must be at least 1 request")
        if self.interval not in ARMOR_INTERVALS:
            raise ValueError(f"--rate-interval {self.interval}: Cloud Armor accepts only {_listed(ARMOR_INTERVALS)}")
        if self.ban_seconds and self.ban_seconds not in BAN_SECONDS:
            raise ValueError(
                f"--ban-seconds {self.ban_seconds}: 0 (no ban) or one of {_listed(BAN_SECONDS)} seconds, "
                "the ban lengths Cloud Armor accepts"
            )


@dataclass(frozen=True)
class Iap:
    """Identity-Aware Proxy: who may pass, and the OAuth client made for it in the console."""

    members: tuple[str, ...]
    client_id: str
    secret_file: Path

    def __post_init__(self) -> None:
        error = members_error(self.members)
        if error:
            raise ValueError(f"--iap: {error}")
        if not re.fullmatch(CLIENT_ID, self.client_id):
            raise ValueError(
                f"--iap-client-id {self.client_id!r}: an OAuth client ID looks like "
                "123456789012-abc123.apps.googleusercontent.com"
            )


@dataclass(frozen=True)
class ModelKey:
    """``--model-public-key``: the Ed25519 public key that signed ``models/current``, as checked.

    ``pem`` is the text the key was read from when it was checked, and the very text the ConfigMap gets:
    the file is read once.
    """

    file: Path
    pem: str
    fingerprint: str


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values[:-1])) + f" or {values[-1]}"


@dataclass(frozen=True)
class GkeOptions:
    """Everything ``deploy gke`` needs; ``tag`` and ``root`` are resolved before planning."""

    project: str
    tag: str
    root: Path
    region: str = "us-central1"
    cluster: str = APP
    repository: str = APP
    nodes: int | None = None
    zone: str | None = None
    build: Literal["docker", "cloud"] = "docker"
    cloudsql_instance: str | None = None  # the audit log on this Cloud SQL for PostgreSQL instance
    expose: Expose = "gateway"
    domain: str | None = None
    iap: Iap | None = None
    throttle: Throttle | None = None  # None: the defaults, on the Gateway path
    model_key: ModelKey | None = None  # the pods then refuse a model it did not sign
    cert_timeout_minutes: int = 60

    def __post_init__(self) -> None:
        error = project_error(self.project) or self._error()
        if error:
            raise ValueError(error)

    def _error(self) -> str | None:
        if ":" in self.project:
            # Their service account e-mails and Workload Identity pools are spelled differently; untested here.
            return "domain-scoped projects (example.com:name) are not supported: create a project of its own"
        if self.expose == "loadbalancer":
            given = [flag for flag, value in self._gateway_only() if value]
            if given:
                return (
                    f"{', '.join(given)}: only for the default Gateway path (HTTPS); "
                    "--expose loadbalancer serves plain HTTP on an IP address"
                )
            return None
        if not self.domain:
            return (
                "--domain is required: the default path serves HTTPS at a name you own "
                "(--domain forecast.example.com); --expose loadbalancer is the plain-HTTP demo"
            )
        return domain_error(self.domain)

    def _gateway_only(self) -> list[tuple[str, object]]:
        return [
            ("--domain", self.domain),
            ("--iap", self.iap),
            ("--rate/--rate-interval/--ban-seconds", self.throttle),
        ]

    @property
    def gateway(self) -> bool:
        return self.expose == "gateway"

    @property
    def armor(self) -> Throttle:
        return self.throttle or Throttle()

    @property
    def image(self) -> str:
        """The Artifact Registry path (Container Registry is shut down; this is its replacement)."""
        return f"{self.region}-docker.pkg.dev/{self.project}/{self.repository}/{APP}"

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"

    @property
    def location(self) -> str:
        """Autopilot clusters are regional; a Standard cluster of N nodes is zonal, so it has N nodes, not 3N."""
        if self.nodes is None:
            return self.region
        return self.zone or f"{self.region}-b"

    @property
    def connection_name(self) -> str:
        """PROJECT:REGION:INSTANCE, what the Cloud SQL Auth Proxy connects to."""
        return f"{self.project}:{self.region}:{self.cloudsql_instance}"

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"

    @property
    def service_account(self) -> str:
        """The Google service account the pods act as (Workload Identity): no key file exists."""
        return gsa_email(self.project)

    @property
    def overlay(self) -> Path:
        return OVERLAY if self.gateway else LB_OVERLAY


def gsa_email(project: str) -> str:
    return f"{GSA_NAME}@{project}.iam.gserviceaccount.com"
