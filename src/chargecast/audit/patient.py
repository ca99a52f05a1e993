"""The one patient hash: how a caller's patient reference is kept, and how it is found again.

The audit log never stores a patient reference, only ``HMAC-SHA256(key, reference)`` in hex,
the key coming from ``CHARGECAST_AUDIT_PATIENT_KEY`` (a Secret). Every path that writes or
looks up a patient uses this function: the service's audit records, ``chargecast predict
--audit`` and the actual charges of ``POST /api/v1/actuals`` and ``chargecast monitor
performance --actuals``, so a reference hashed by one is found by the others. Standard
library only: serving, the CLI and monitoring all import it.
"""

from __future__ import annotations

import hashlib
import hmac


def patient_hash(key: bytes, reference: str) -> str:
    """HMAC-SHA256 hex of a patient reference: linkable with the key, never the reference.

    ``surrogatepass``: any Python string hashes (a lone surrogate cannot come from a UTF-8
    file or from strict JSON, so every reference a caller can send hashes as its UTF-8 bytes).
    """
    return hmac.new(key, reference.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
