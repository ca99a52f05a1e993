"""The audit log from the routes' side: what a request hands over.

A route calls :meth:`Audit.submit` after it has its answer; that pickles one entry (the
validated rows and the answer as bytes or arrays, the request's ids, the caller's label:
:mod:`chargecast.audit.records`) onto the worker's queue for its audit process
(:mod:`chargecast.audit.sidecar`), and nothing else. Building the rows and writing them
happen in that process, so the request pays for a pickle and a lock, and never waits for the
interpreter lock while a batch is written.
"""

from __future__ import annotations

import time
from typing import Any, Final

from starlette.types import Scope

from chargecast.audit.records import ARRAYS, BARE, FORM, MANY, ONE, Builder, ModelRef
from chargecast.audit.sidecar import Config, Sidecar
from chargecast.model.artifact import Artifact
from chargecast.schema import PATIENT_REF, Issue
from chargecast.serving.errors import invalid
from chargecast.settings import Settings

# What one queued one-record entry holds at most, in the worker (its pickle) and in the audit
# process (the entry), with a 128-character client id and patient reference (tested): the
# queues' bound in bytes is this times audit_queue_size (docs/limits.md).
QUEUED_RECORD_BYTES: Final = 1280
CALLER: Final = "chargecast.caller"  # scope key: the IAP email or the API-key label the gate matched
NO_KEY_RULE: Final = (
    "cannot be stored: the server has no patient key to hash it with (CHARGECAST_AUDIT_PATIENT_KEY); "
    "send the record without it"
)
__all__ = ["ARRAYS", "BARE", "CALLER", "FORM", "MANY", "ONE", "Audit", "compact"]


def compact(body: bytes) -> bytes:
    """The answer's bytes in a buffer of their size: orjson's output keeps the buffer it grew
    (4 KiB for a 140-byte answer), and a queued answer would hold all of it until written."""
    return memoryview(body).tobytes()


class Audit:
    """One worker's audit log: the writer, the patient key, and the entries routes submit."""

    def __init__(self, settings: Settings) -> None:
        self.key = settings.patient_key()
        self.digest = ""  # sha256 of the served model's metadata.json, set once it is loaded
        config = Config(
            url=settings.audit_url,
            spool_dir=settings.spool_dir(),
            spool_max_bytes=settings.audit_spool_max_bytes,
            queue_size=settings.audit_queue_size,
            batch_size=settings.audit_batch_size,
            flush_seconds=settings.audit_flush_seconds,
            close_seconds=settings.shutdown_timeout / 2,
            key=self.key,
            log_level=settings.log_level,
        )
        self.writer = Sidecar(config, Builder(self.key))

    def loaded(self, model: Artifact, digest: str) -> None:
        """The worker's model is loaded: its records carry this version and digest."""
        self.digest = digest
        self.writer.tell(ModelRef.of(model, digest))

    # -- the request side ------------------------------------------------------------------
    def refs(self, payload: Any) -> Any:
        """The patient references of a body (one, a list, or None); a 422 if any is given but
        no key is configured to hash it with."""
        if type(payload) is dict:
            found: Any = payload.get(PATIENT_REF) or None
            given = found is not None
        else:
            found = [item.get(PATIENT_REF) or None for item in payload]
            given = any(r is not None for r in found)
            found = found if given else None
        if given:
            self.require_key()
        return found

    def require_key(self) -> None:
        """A patient reference was sent: refuse it (422) unless there is a key to hash it with."""
        if self.key is None:
            raise invalid([Issue(PATIENT_REF, NO_KEY_RULE)], what="record")

    def submit(self, scope: Scope, route: str, kind: int, rows: int, *data: Any) -> None:
        state = scope["state"]
        entry = (kind, time.time(), route, state["request_id"], state.get("client_request_id"), scope.get(CALLER))
        self.writer.submit((*entry, *data), rows)
