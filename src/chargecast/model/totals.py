"""A book's total, added up chunk by chunk: what a JSON list, the CSV summary route and
``chargecast predict --summary`` answer, byte for byte.

Files can hold millions of patients, so the total never needs all rows at once: books of
more than ``MONTE_CARLO_BOOK`` patients need only the sum of forecasts (in fixed blocks, so
the result does not depend on how the file was chunked) and the patients per interval group.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from chargecast import schema
from chargecast.model.intervals import MONTE_CARLO_BOOK, assign_groups

if TYPE_CHECKING:
    from chargecast.model.artifact import Artifact, Prediction

# Forecasts are summed in blocks of this many rows, whatever the chunks: a book's total is then
# the same to the last bit however the file was chunked, and equal to Artifact.total up to a block.
TOTAL_BLOCK: Final = 16_384


class BookTotal:
    """A book's total (:meth:`Artifact.total`) added up chunk by chunk, never holding all rows.

    Books of more than ``MONTE_CARLO_BOOK`` patients need only the sum of forecasts and the
    patients per interval group; smaller ones are simulated, so their few rows are kept.
    """

    def __init__(self, model: Artifact) -> None:
        self.model = model
        self.rows = 0
        self._groups = model.distribution.groups
        self._counts = np.zeros(len(self._groups), dtype=np.int64)
        self._block_sums: list[float] = []
        self._pending: npt.NDArray[np.float64] = np.empty(0)  # forecasts not yet in a full block
        self._small: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] | None = []

    def add(self, X: npt.NDArray[np.float64], charges: npt.NDArray[np.float64]) -> None:
        """Take one predicted chunk: encoded rows and their forecasts."""
        self.rows += len(charges)
        self._counts += np.bincount(assign_groups(X, self._groups), minlength=len(self._groups))
        if self._small is not None:
            self._small = [*self._small, (X.copy(), charges.copy())] if self.rows <= MONTE_CARLO_BOOK else None
        pending = np.concatenate([self._pending, charges])
        full = len(pending) - len(pending) % TOTAL_BLOCK
        self._block_sums.extend(float(np.sum(pending[i : i + TOTAL_BLOCK])) for i in range(0, full, TOTAL_BLOCK))
        self._pending = pending[full:].copy()

    def total(self) -> Prediction:
        from chargecast.model.artifact import Prediction

        if self._small is not None:
            X = np.concatenate([x for x, _ in self._small]) if self._small else np.empty((0, len(schema.FEATURES)))
            charges = np.concatenate([c for _, c in self._small]) if self._small else np.empty(0)
            return self.model.total(charges, X)
        summed = math.fsum([*self._block_sums, float(np.sum(self._pending))])
        return Prediction(*self.model.distribution.total_from_counts(summed, self._counts.astype(np.float64)))


def total_json(total: Prediction, level: float) -> dict[str, Any]:
    """A book's total as the API and ``--summary`` write it."""
    return {"charges": total.charges, "interval": {"low": total.low, "high": total.high, "level": level}}


def summary_json(book: BookTotal) -> bytes:
    """``{"rows": n, "total": {...}}``: the CLI's --summary file and the summary route's body, byte for byte."""
    return orjson.dumps({"rows": book.rows, "total": total_json(book.total(), book.model.level)})
