"""The audit records of one ``chargecast predict`` run, held back until the run has succeeded.

The log must say what was delivered. A run refused for a bad line delivers no output, so it
must log nothing, and the scorer only knows that once it has read the last line. Keeping every
record in memory until then would break the scorer's promise of flat memory on files larger
than RAM, so each scored chunk goes to an anonymous temporary file (the six encoded inputs and
three forecasts as float64, 72 bytes a row, plus 64 for a patient hash) and is replayed into the
store, a chunk per ``Store.write``, after the whole file validated and *before* the output is
renamed into place. So a forecast is never handed out without its record; the one gap left is
a crash or a database failure during the replay, which leaves some records of a run whose
output never appeared (all under that run's request id, which the error message names).
"""

from __future__ import annotations

import getpass
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from chargecast.audit.patient import patient_hash
from chargecast.audit.store import Forecast, Store
from chargecast.csvformat import normalize
from chargecast.schema import FEATURES, FIELDS, CategoryField

if TYPE_CHECKING:
    from chargecast.model.artifact import Artifact

Array = npt.NDArray[np.float64]
ROUTE: Final = "cli"
PATIENT_COLUMN: Final = "patient_ref"
PATIENT_SETTING: Final = "CHARGECAST_AUDIT_PATIENT_KEY"
_WIDTH: Final = len(FEATURES) + 3  # the inputs, then charges, low, high
_HASH: Final = 64  # hex characters of an HMAC-SHA256


class RunLogError(Exception):
    """The run cannot be logged as asked; the message says what to change."""


def new_request_id() -> str:
    """A fresh id for one run, unlike any server request id (those are not prefixed)."""
    return "cli-" + secrets.token_hex(8)


def os_user() -> str | None:
    """Who ran the command, as the OS knows them; None in a container without a passwd entry."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


class RunLog:
    """Collects one run's forecasts chunk by chunk, then writes them to ``store`` in one go."""

    def __init__(
        self,
        store: Store,
        model: Artifact,
        digest: str,
        *,
        patient_key: bytes | None = None,
        caller: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.digest = digest
        self.patient_key = patient_key
        self.caller = caller
        self.request_id = request_id or new_request_id()
        self.written = 0
        self._spool: IO[bytes] = tempfile.TemporaryFile(prefix="chargecast-audit-")  # noqa: SIM115 (closed in close)
        self._chunks: list[int] = []
        self._patients = False

    def patient_column(self, header: Sequence[str]) -> int | None:
        """Where the file's ``patient_ref`` column is, if it has one; refused without a key to hash it."""
        names = [normalize(cell) for cell in header]
        if PATIENT_COLUMN not in names:
            return None
        if not self.patient_key:
            raise RunLogError(
                f"column {PATIENT_COLUMN}: the audit log stores patient references only as keyed hashes; "
                f"set {PATIENT_SETTING} (or remove the column)"
            )
        self._patients = True
        return names.index(PATIENT_COLUMN)

    def add(self, X: Array, charges: Array, low: Array, high: Array, refs: Sequence[Any] | None = None) -> None:
        """Spool one scored chunk; ``refs`` are its patient references (a blank one is no patient)."""
        block = np.empty((len(X), _WIDTH), dtype=np.float64)
        block[:, : len(FEATURES)] = X
        block[:, len(FEATURES) :] = np.column_stack((charges, low, high))
        self._spool.write(block.tobytes())
        if self._patients:
            key = self.patient_key or b""
            texts = ["" if ref is None else str(ref).strip() for ref in refs or [None] * len(X)]
            hashes = [patient_hash(key, text).encode("ascii") if text else b"" for text in texts]
            self._spool.write(np.array(hashes, dtype=f"S{_HASH}").tobytes())
        self._chunks.append(len(X))

    def commit(self) -> int:
        """Write every spooled forecast, a chunk per store write; return how many were inserted."""
        when = datetime.now(UTC)  # one time for the run: when its last row was forecast
        self._spool.seek(0)
        first = 0
        for n in self._chunks:
            block = np.frombuffer(self._spool.read(n * _WIDTH * 8), dtype=np.float64).reshape(n, _WIDTH)
            patients = None
            if self._patients:
                raw = np.frombuffer(self._spool.read(n * _HASH), dtype=f"S{_HASH}")
                patients = [h.decode("ascii") or None for h in raw.tolist()]
            self.written += self.store.write(list(self._forecasts(block, first, when, patients)))
            first += n
        return self.written

    def _forecasts(
        self, block: Array, first: int, when: datetime, patients: list[str | None] | None
    ) -> Iterator[Forecast]:
        X = block[:, : len(FEATURES)]
        inputs = _inputs(X)
        outside = self.model.extrapolated_rows(X)
        level, version = float(self.model.level), self.model.version
        charges, low, high = (block[:, j].tolist() for j in range(len(FEATURES), _WIDTH))
        for i, record in enumerate(inputs):
            yield Forecast(
                request_id=self.request_id,
                row=first + i,
                time=when,
                model_version=version,
                model_digest=self.digest,
                route=ROUTE,
                caller=self.caller,
                patient=None if patients is None else patients[i],
                inputs=record,
                charges=charges[i],
                low=low[i],
                high=high[i],
                level=level,
                quantiles=None,
                extrapolated=tuple(outside[i]),
                client_request_id=None,
            )

    def close(self) -> None:
        self._spool.close()


def _inputs(X: Array) -> list[dict[str, float | str]]:
    """Each encoded row as the store keeps it: numbers as float, categories as their canonical name."""
    columns: list[list[float] | list[str]] = []
    for j, spec in enumerate(FIELDS):
        values: list[float] = X[:, j].tolist()
        columns.append([spec.choices[int(v)] for v in values] if isinstance(spec, CategoryField) else values)
    return [dict(zip(FEATURES, row, strict=True)) for row in zip(*columns, strict=True)]
