"""Reading a Google-managed certificate's state, in plain words, with what to do about it.

``gcloud certificate-manager certificates describe NAME --format=json`` reports ``managed.state``
(PROVISIONING, ACTIVE, FAILED), a ``provisioningIssue`` (AUTHORIZATION_ISSUE, RATE_LIMITED) and,
per domain, an ``authorizationAttemptInfo`` whose ``failureReason`` is CONFIG, CAA or RATE_LIMITED.
With DNS authorisation the certificate waits for the ``_acme-challenge`` CNAME only: what
load-balancer-authorised certificates report as FAILED_NOT_VISIBLE (DNS not pointing at the load
balancer yet) shows up here as CONFIG, and the A record only matters for serving.
"""

from __future__ import annotations

import json
from typing import Any

from chargecast.deploy.options import CERT_MAP, CERT_MAP_ENTRY, CERTIFICATE
from chargecast.deploy.plan import HopelessError, Reading

WAITING = (
    "PROVISIONING: Google's certificate authority is waiting to see the _acme-challenge CNAME record "
    "printed above; it usually takes 15 to 60 minutes once the record is in public DNS"
)
REASONS = {
    "CONFIG": (
        "the DNS check failed (CONFIG): the CNAME _acme-challenge.{domain} is missing, wrong or not visible "
        "yet (like FAILED_NOT_VISIBLE for load-balancer-authorised certificates). Add the record exactly as "
        "printed above and check it with `dig +short CNAME _acme-challenge.{domain}`"
    ),
    "CAA": (
        'a CAA record forbids Google\'s certificate authorities (CAA): add `{domain}. CAA 0 issue "pki.goog"` '
        "beside your other CAA records, or remove the restriction"
    ),
    "RATE_LIMITED": (
        "the certificate authority's rate limit for this domain was reached (RATE_LIMITED): nothing to fix, "
        "Google retries by itself, it only takes longer"
    ),
}
ISSUES = {
    "AUTHORIZATION_ISSUE": "a domain could not be authorised (AUTHORIZATION_ISSUE)",
    "RATE_LIMITED": (
        "Google's or the certificate authority's quota is exhausted (RATE_LIMITED): Google retries by itself, "
        "it only takes longer"
    ),
}
RECREATE = (
    "Do not wait for a FAILED certificate to recover: fix the cause, then remove it and its map entry "
    f"(`gcloud certificate-manager maps entries delete {CERT_MAP_ENTRY} --map={CERT_MAP}` and "
    f"`gcloud certificate-manager certificates delete {CERTIFICATE}`, or all of it: `chargecast deploy "
    "teardown`) and run the deploy again"
)


def _domains(managed: dict[str, Any]) -> list[str]:
    """One sentence per domain whose authorisation went wrong, saying why in plain words."""
    found = []
    for attempt in managed.get("authorizationAttemptInfo") or []:
        domain = str(attempt.get("domain", "?"))
        reason = str(attempt.get("failureReason", ""))
        if not reason and attempt.get("state") != "FAILED":
            continue  # AUTHORIZING or AUTHORIZED: nothing to say yet
        text = REASONS.get(reason, "").format(domain=domain) or f"authorisation {reason or 'FAILED'}"
        details = str(attempt.get("details", "")).strip()
        found.append(f"{domain}: {text}" + (f" (Google says: {details})" if details else ""))
    return found


def _issue(managed: dict[str, Any]) -> list[str]:
    issue = managed.get("provisioningIssue") or {}
    reason = str(issue.get("reason", ""))
    if not reason:
        return []
    details = str(issue.get("details", "")).strip()
    return [ISSUES.get(reason, reason) + (f" (Google says: {details})" if details else "")]


def read_certificate(output: str) -> Reading:
    """ACTIVE is done; PROVISIONING is a note (with any issue explained); FAILED is hopeless."""
    try:
        described = json.loads(output)
    except json.JSONDecodeError:
        raise HopelessError(f"gcloud printed something that is not JSON: {output.strip()[:200]!r}") from None
    managed = described.get("managed") if isinstance(described, dict) else None
    if not isinstance(managed, dict):
        raise HopelessError(f"{CERTIFICATE} is not a Google-managed certificate; this deploy cannot wait for it")
    state = str(managed.get("state", ""))
    if state == "ACTIVE":
        return Reading("ACTIVE")
    problems = _issue(managed) + _domains(managed)
    if state == "FAILED":
        raise HopelessError(
            "the certificate FAILED: " + "; ".join(problems or ["Google gave no reason"]) + ". " + RECREATE
        )
    if problems:
        return Reading(None, f"{state or 'PROVISIONING'}: " + "; ".join(problems))
    return Reading(None, WAITING if state in ("PROVISIONING", "") else f"{state}: waiting for ACTIVE")
