"""The CSV routes' protocol: where the CSV is in a body, how it is read, scored and echoed.

Reading and writing are :mod:`chargecast.csvformat`'s, the code ``chargecast predict`` and
training use too, so the same file gets the same errors (by line) and, from the CLI and from
this route, byte for byte the same output. The upload is read twice: once to validate every
record and predict (nothing is sent unless all are valid), once to write the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from chargecast import csvformat
from chargecast.csvformat import OUTPUT_COLUMNS
from chargecast.model.artifact import Artifact
from chargecast.model.totals import BookTotal, summary_json
from chargecast.schema import Issue, ValidationError
from chargecast.serving.errors import ApiError, invalid
from chargecast.serving.formdata import parse_multipart
from chargecast.serving.request import media_type

Array = npt.NDArray[np.float64]
ANSWER_ROWS: Final = 2048  # records per piece of the streamed answer
# Records validated per step. Python holds each cell as a str (~60 bytes): 4,096 rows keep a
# step near 2 MB, inside the memory budget's fixed part (the CLI, unbudgeted, takes more).
SCORE_ROWS: Final = 4096
CSV_TYPES: Final = frozenset({"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"})


__all__ = ["CSV_TYPES", "OUTPUT_COLUMNS", "CsvScored", "CsvSource", "csv_chunks", "csv_source", "score_csv"]


@dataclass
class CsvSource:
    """A CSV inside a request body, by offsets (the file part of a multipart upload, or all)."""

    body: bytearray
    start: int
    end: int
    filename: str | None = None

    def rows_bound(self) -> int:
        """At most this many records: one per line (counted at memchr speed, nothing decoded)."""
        return csvformat.line_breaks(self.body, self.start, self.end) + 1

    def reader(self, max_rows: int | None = None) -> csvformat.Reader:
        """The one CSV reader over this upload, a block at a time."""
        blocks = csvformat.buffer_blocks(self.body, self.start, self.end)
        try:
            return csvformat.Reader(blocks, target=False, max_rows=max_rows)
        except ValidationError as exc:
            raise _refusal(exc) from None


@dataclass
class CsvScored:
    """A validated, predicted CSV: its bytes (kept once, to echo rows) and the three new columns."""

    source: CsvSource
    charges: Array
    low: Array
    high: Array

    @property
    def rows(self) -> int:
        return len(self.charges)

    @property
    def filename(self) -> str | None:
        return self.source.filename


def require_csv(content_type: str | None) -> None:
    """A CSV body or a multipart upload; checked before the (possibly large) body is read."""
    kind = media_type(content_type)
    if kind != "multipart/form-data" and kind not in CSV_TYPES:
        raise ApiError(
            415,
            f"Content-Type must be text/csv or multipart/form-data ({f'got {kind}' if kind else 'none was sent'})",
            [Issue("Content-Type", "must be text/csv or multipart/form-data", kind or None)],
        )


def csv_source(body: bytearray, content_type: str | None) -> CsvSource:
    """Where the CSV is in a request body: all of it, or the file part of a multipart upload."""
    kind = media_type(content_type)
    if kind != "multipart/form-data":
        require_csv(content_type)
        return CsvSource(body, 0, len(body))
    parts = parse_multipart(body, content_type or "")
    chosen = next((p for p in parts if p.name == "file"), None) or next(
        (p for p in parts if p.filename is not None), None
    )
    if chosen is None:
        raise ApiError(
            422,
            "multipart upload has no file part: send the CSV as the field 'file'",
            [Issue("file", "is required")],
        )
    return CsvSource(body, chosen.start, chosen.end, chosen.filename)


def _refusal(exc: ValidationError) -> ApiError:
    """A file that is not CSV text is a 400; a CSV that breaks the schema is a 422."""
    if all(i.field == "file" and i.rule != "has no data rows" for i in exc.issues):
        return ApiError(400, f"CSV cannot be read: {exc.issues[0]}", list(exc.issues))
    return invalid(exc.issues, exc.total, what="CSV")


def _too_many(limit: int) -> ApiError:
    return ApiError(
        413,
        f"CSV has more than {limit} data rows; split it into smaller files",
        [Issue("body", f"must have at most {limit} rows")],
    )


def score_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = SCORE_ROWS,
) -> CsvScored:
    """Validate every record and predict, chunk by chunk; all or nothing.

    Memory holds the upload, the three result columns and one chunk. After the first bad
    record only validation goes on, so the 422 lists problems from the whole file.
    ``on_chunk(X, charges)`` sees each predicted chunk (for metrics and book totals; they
    count only if the whole file turns out valid).
    """
    reader = source.reader(max_rows)
    results: list[tuple[Array, Array, Array]] = []
    try:
        for chunk in reader.chunks(chunk_rows):
            X, found, count = csvformat.encode(chunk, reader.header)
            reader.problems.add(found, count)
            if X is not None and not reader.problems.total:
                charges, low, high = model.predict(X)
                results.append((charges, low, high))
                if on_chunk is not None:
                    on_chunk(X, charges)
        reader.problems.raise_if_any()
    except csvformat.TooManyRowsError as exc:
        raise _too_many(exc.limit) from None
    except ValidationError as exc:
        raise _refusal(exc) from None
    charges, low, high = (np.concatenate(part) for part in zip(*results, strict=True))
    return CsvScored(source, charges, low, high)


def summarize_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = SCORE_ROWS,
) -> bytes:
    """``{"rows": n, "total": {...}}`` of a CSV, under :func:`score_csv`'s rules: the same
    bytes that ``chargecast predict --summary`` writes for the file."""
    book = BookTotal(model)

    def add(X: Array, charges: Array) -> None:
        book.add(X, charges)
        if on_chunk is not None:
            on_chunk(X, charges)

    summarize_scored(model, source, max_rows, add, chunk_rows)
    return summary_json(book)


def summarize_scored(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None],
    chunk_rows: int = SCORE_ROWS,
) -> CsvScored:
    """:func:`score_csv` for a summary whose caller also wants the rows (the audit log)."""
    return score_csv(model, source, max_rows, on_chunk=on_chunk, chunk_rows=chunk_rows)


def patient_refs(source: CsvSource) -> list[str | None] | None:
    """The ``patient_ref`` column of a validated CSV (empty cells as None), or None without one."""
    reader = source.reader()
    where = csvformat.patient_ref_column(reader.header)
    if where is None:
        return None
    return [cell or None for chunk in reader.chunks(ANSWER_ROWS) for cell in chunk.column(where)]


def csv_chunks(scored: CsvScored) -> Iterator[bytes]:
    """The answer, in pieces: the upload's cells as they came and the three forecast columns,
    written by :class:`csvformat.Writer`, exactly as ``chargecast predict`` writes the file."""
    reader = scored.source.reader()
    writer = csvformat.Writer(reader.header)
    yield writer.head
    done = 0
    for chunk in reader.chunks(ANSWER_ROWS):
        stop = done + len(chunk)
        yield writer.rows(
            chunk.rows, scored.charges[done:stop], scored.low[done:stop], scored.high[done:stop], plain=reader.plain
        )
        done = stop
