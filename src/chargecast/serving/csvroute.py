"""The CSV routes' protocol: where the CSV is in a body, how it is read, scored and echoed."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from chargecast.model.artifact import Artifact
from chargecast.model.totals import BookTotal, summary_json
from chargecast.schema import FEATURES, MAX_REPORTED_ISSUES, Issue, ValidationError, encode_columns
from chargecast.serving.errors import ApiError, invalid
from chargecast.serving.formdata import parse_multipart
from chargecast.serving.request import media_type

Array = npt.NDArray[np.float64]
OUTPUT_COLUMNS: Final = ("charges", "charges_low", "charges_high")
CSV_CHUNK_ROWS: Final = 32_768
CSV_TYPES: Final = frozenset({"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"})


# -- CSV --------------------------------------------------------------------------------
CSV_BLOCK: Final = 1 << 20  # bytes decoded at a time: the text is never held whole as a str
_BOM: Final = b"\xef\xbb\xbf"


@dataclass
class CsvSource:
    """A CSV inside a request body, by offsets (the file part of a multipart upload, or all)."""

    body: bytearray
    start: int
    end: int
    filename: str | None = None

    def rows_bound(self) -> int:
        """At most this many records: one per line (found at memchr speed, nothing decoded)."""
        return self.body.count(b"\n", self.start, self.end) + 1


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


def _lines(text: str) -> Iterator[str]:
    """Lines with their endings, sliced one at a time (no list of all lines is built)."""
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _text_lines(source: CsvSource) -> Iterator[str]:
    """The CSV's lines as text, decoded a block (about 1 MiB, cut after a newline) at a time.

    Decoding everything at once held the whole upload as a str, at up to four bytes per
    character when one character is outside Latin-1; block by block, that copy is bounded.
    A newline byte never occurs inside a UTF-8 sequence, so cutting after one is safe.
    """
    body, pos, end = source.body, source.start, source.end
    if body.startswith(_BOM, pos, end):
        pos += len(_BOM)
    base = pos
    with memoryview(body) as view:
        while pos < end:
            stop = min(pos + CSV_BLOCK, end)
            if stop < end:
                cut = body.rfind(b"\n", pos, stop)
                if cut < 0:  # one line longer than a block: take the whole line
                    cut = body.find(b"\n", stop, end)
                stop = end if cut < 0 else cut + 1
            try:
                text = str(view[pos:stop], "utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(
                    400,
                    f"CSV is not UTF-8 text: {exc.reason} at byte {pos - base + exc.start}",
                    [Issue("body", "must be UTF-8")],
                ) from None
            yield from _lines(text)
            del text
            pos = stop


def _byte_lines(source: CsvSource) -> Iterator[bytes]:
    """The CSV's lines as bytes with their endings (after a BOM), for echoing them unchanged."""
    body, pos, end = source.body, source.start, source.end
    if body.startswith(_BOM, pos, end):
        pos += len(_BOM)
    while pos < end:
        cut = body.find(b"\n", pos, end)
        stop = end if cut < 0 else cut + 1
        yield bytes(body[pos:stop])
        pos = stop


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


def score_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = CSV_CHUNK_ROWS,
) -> CsvScored:
    """Parse column-wise with the stdlib reader, validate with the schema, predict, chunk by chunk.

    Only the six input columns are collected, as lists of (interned) strings that
    ``schema.encode_columns`` checks vectorised every ``chunk_rows`` rows; a valid chunk is
    predicted at once and only its three result columns are kept, so memory holds the upload,
    the results and one chunk (and one decoded block), whatever the row count. ``on_chunk(X, charges)`` sees each
    predicted chunk (for metrics; they count only if the whole file turns out valid).
    Other columns pass through untouched. Rows are numbered from 1 at the first data row
    (header and blank lines not counted).
    """
    reader = csv.reader(_text_lines(source))
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise ApiError(
                400, "CSV is empty: send a header row and data rows", [Issue("body", "is required")]
            ) from None
        names = [h.strip().lower() for h in header]
        problems: list[Issue] = []
        for name in OUTPUT_COLUMNS:
            if name in names:
                problems.append(Issue(name, "is a column this endpoint adds; remove or rename it"))
        for name in FEATURES:
            count = names.count(name)
            if count == 0:
                problems.append(Issue(name, "column is required"))
            elif count > 1:
                problems.append(Issue(name, f"column appears {count} times"))
        if problems:
            raise invalid(problems, what="CSV header")
        index = [names.index(name) for name in FEATURES]
        width = len(names)
        columns: list[list[str]] = [[] for _ in FEATURES]
        interned: list[dict[str, str]] = [{} for _ in FEATURES]
        plan = list(zip(index, [c.append for c in columns], [d.setdefault for d in interned], strict=True))
        results: list[tuple[Array, Array, Array]] = []
        issues: list[Issue] = []
        bad_total = 0
        first_row = 1  # the row number of the chunk's first row

        def encode_chunk() -> None:
            nonlocal bad_total
            if not columns[0]:
                return
            try:
                X = encode_columns({name: columns[j] for j, name in enumerate(FEATURES)}, first_row=first_row)
            except ValidationError as exc:
                bad_total += exc.total
                issues.extend(exc.issues[: max(0, MAX_REPORTED_ISSUES - len(issues))])
            else:
                if not bad_total:  # after the first bad row only validation goes on
                    charges, low, high = model.predict(X)
                    results.append((charges, low, high))
                    if on_chunk is not None:
                        on_chunk(X, charges)
            for column, seen in zip(columns, interned, strict=True):
                column.clear()
                seen.clear()

        ragged: list[Issue] = []
        n = ragged_total = 0
        for row in reader:
            if not row:
                continue
            n += 1
            if n > max_rows:
                raise ApiError(
                    413,
                    f"CSV has more than {max_rows} data rows; split it into smaller files",
                    [Issue("body", f"must have at most {max_rows} rows")],
                )
            if len(row) != width:
                if not ragged_total:
                    encode_chunk()  # rows before it are still numbered right; later ones are not read
                ragged_total += 1
                if len(ragged) < MAX_REPORTED_ISSUES:
                    ragged.append(Issue("(row)", f"has {len(row)} values but the header has {width}", None, n))
                continue
            if ragged_total:
                continue
            for j, append, intern in plan:
                value = row[j]
                append(intern(value, value))
            if len(columns[0]) >= chunk_rows:
                encode_chunk()
                first_row = n + 1
    except csv.Error as exc:
        raise ApiError(
            400, f"CSV cannot be parsed at line {reader.line_num}: {exc}", [Issue("body", "must be valid CSV")]
        ) from None
    if not ragged_total:
        encode_chunk()
    if ragged_total or bad_total:
        found = sorted([*issues, *ragged], key=lambda i: i.row or 0)
        raise invalid(found, bad_total + ragged_total, what="CSV")
    if n == 0:
        raise invalid([Issue("body", "must have at least one data row")], what="CSV")
    charges, low, high = (np.concatenate(part) for part in zip(*results, strict=True))
    return CsvScored(source, charges, low, high)


def summarize_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = CSV_CHUNK_ROWS,
) -> bytes:
    """``{"rows": n, "total": {...}}`` of a CSV, under :func:`score_csv`'s rules: the same
    bytes that ``chargecast predict --summary`` writes for the file."""
    book = BookTotal(model)

    def add(X: Array, charges: Array) -> None:
        book.add(X, charges)
        if on_chunk is not None:
            on_chunk(X, charges)

    score_csv(model, source, max_rows, on_chunk=add, chunk_rows=chunk_rows)
    return summary_json(book)


def csv_chunks(scored: CsvScored, rows_per_chunk: int = 2000) -> Iterator[bytes]:
    """The uploaded CSV with ``charges``, ``charges_low``, ``charges_high`` appended, in chunks.

    Rows are echoed byte for byte when the file has no quoting (the common case); otherwise
    they are re-written by the csv module. Amounts are rounded to cents.
    """
    source = scored.source
    charges, low, high = scored.charges, scored.low, scored.high
    total = len(charges)
    if source.body.find(b'"', source.start, source.end) < 0:
        lines = _byte_lines(source)
        header = next(lines)
        eol = b"\r\n" if header.endswith(b"\r\n") else b"\n"
        yield header.rstrip(b"\r\n") + b"," + ",".join(OUTPUT_COLUMNS).encode() + eol
        done = 0
        while done < total:
            stop = min(done + rows_per_chunk, total)
            values = zip(charges[done:stop].tolist(), low[done:stop].tolist(), high[done:stop].tolist(), strict=True)
            out: list[bytes] = []
            for c, lo, hi in values:
                line = next(lines).rstrip(b"\r\n")
                while not line:  # blank lines carry no row
                    line = next(lines).rstrip(b"\r\n")
                out.append(b"%s,%.2f,%.2f,%.2f%s" % (line, c, lo, hi, eol))
            yield b"".join(out)
            done = stop
        return
    reader = csv.reader(_text_lines(source))
    header_row = next(reader)
    first = source.body.find(b"\n", source.start, source.end)
    eol_text = "\r\n" if first > source.start and source.body[first - 1] == 0x0D else "\n"
    buffer = _Buffer()
    writer = csv.writer(buffer, lineterminator=eol_text)
    writer.writerow([*header_row, *OUTPUT_COLUMNS])
    done = 0
    for row in reader:
        if not row:
            continue
        writer.writerow([*row, f"{charges[done]:.2f}", f"{low[done]:.2f}", f"{high[done]:.2f}"])
        done += 1
        if done % rows_per_chunk == 0:
            yield buffer.take()
    yield buffer.take()


class _Buffer:
    """A write-only text sink for csv.writer that hands out its content as UTF-8 chunks."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def take(self) -> bytes:
        out = "".join(self._parts).encode()
        self._parts.clear()
        return out
