"""Batch scoring: stream a CSV or Parquet file of patients through the model, chunk by chunk.

Files can be far larger than memory, so nothing here holds more than a chunk: each is
validated, predicted, written out and dropped. Output is all or nothing: it goes to a
temporary file beside ``dest`` and is renamed into place only when every row was valid, so
a failed run never leaves a truncated file or clobbers an earlier result.

CSV is read and written by :mod:`chargecast.csvformat`, the same code as the API's CSV route,
so a file gets the same header rules, the same line numbers in errors and byte for byte the
same output from ``chargecast predict`` as from ``POST /api/v1/predict/csv``. Parquet goes
through pyarrow, an optional extra (``chargecast[batch]``) imported only for Parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt

from chargecast import csvformat, schema
from chargecast.csvformat import OUTPUT_COLUMNS
from chargecast.model.totals import BookTotal, summary_json
from chargecast.schema import FEATURES, ValidationError

if TYPE_CHECKING:
    from chargecast.audit.runlog import RunLog
    from chargecast.model.artifact import Artifact

Format = Literal["csv", "parquet"]
FORMATS: Final[dict[str, Format]] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
Array = npt.NDArray[np.float64]

__all__ = ["FORMATS", "OUTPUT_COLUMNS", "BatchError", "score_file"]


class BatchError(Exception):
    """The input cannot be read or the output cannot be written; the message says which and why."""


@dataclass
class _Rows:
    """One chunk of input: its lines (Parquet: row numbers), and its cells or its pyarrow table."""

    lines: Sequence[int]
    cells: list[list[str]] | None = None
    table: Any = None
    plain: bool = False  # CSV cells with no comma, quote or newline in any of them

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, j: int) -> list[Any]:
        """One column's values (``patient_ref`` for the audit log)."""
        return [row[j] for row in self.cells] if self.cells is not None else self.table.column(j).to_pylist()

    def text(self) -> list[list[str]]:
        """The cells as text, as a CSV output writes them (a Parquet null is an empty cell)."""
        if self.cells is not None:
            return self.cells
        columns = [["" if v is None else str(v) for v in column.to_pylist()] for column in self.table.columns]
        return [list(row) for row in zip(*columns, strict=True)]


@dataclass
class _Input:
    """An opened input: its header (the same rules for CSV and Parquet) and its chunks."""

    header: csvformat.Header
    chunks: Iterator[_Rows]
    problems: csvformat.Problems  # what reading found (ragged records); validation adds to it
    arrow_schema: Any = None  # Parquet only: the columns' types, kept in a Parquet output


@dataclass
class _Job:
    """What scoring a file needs: the model, the running total, every problem found."""

    model: Artifact
    book: BookTotal
    problems: csvformat.Problems
    written: int = 0
    audit: RunLog | None = None
    patients: int | None = None  # the patient_ref column the audit log hashes, if any


def score_file(
    source: Path,
    dest: Path,
    artifact: Artifact,
    *,
    chunk_rows: int = csvformat.CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    summary: Path | None = None,
    audit: RunLog | None = None,
) -> int:
    """Score every row of ``source`` into ``dest``; return the number of rows written.

    Formats follow the suffixes (``.csv``, ``.parquet``/``.pq``; they may differ). The output
    keeps the input's columns and appends ``charges``, ``charges_low`` and ``charges_high``;
    an input that already has such a column is refused. ``summary`` gets the row count and
    the book's total with its interval, as ``POST /api/v1/predict/csv/summary`` answers.

    Raises :class:`~chargecast.schema.ValidationError` for a bad header (at once) or bad rows
    (after scanning the whole file, so every problem's line is reported in one go), and
    :class:`BatchError` when a file cannot be read or written. On any failure ``dest`` and
    ``summary`` are left as they were. ``progress`` gets the rows read per chunk. ``audit``
    gets every forecast and writes them to its store only once the whole file scored, just
    before the output is renamed into place (see :mod:`chargecast.audit.runlog`).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    source, dest = Path(source), Path(dest)
    in_format, out_format = _format(source, "input"), _format(dest, "output")
    summary = _check_paths(source, dest, summary)
    with contextlib.ExitStack() as stack:
        opened = (_csv_input if in_format == "csv" else _parquet_input)(source, chunk_rows, stack)
        job = _Job(artifact, BookTotal(artifact), opened.problems, audit=audit)
        if audit is not None:
            job.patients = audit.patient_column(opened.header.cells)
        tmp = _temp_path(dest)
        stack.callback(tmp.unlink, missing_ok=True)  # gone unless renamed into place
        sink = _CsvSink(tmp, dest, opened.header) if out_format == "csv" else _ParquetSink(tmp, dest, opened)
        with contextlib.closing(sink):
            for chunk in opened.chunks:
                _score_chunk(job, chunk, opened.header, sink)
                if progress is not None:
                    progress(len(chunk))
            job.problems.raise_if_any()
        _publish(tmp, dest, summary, job.book, stack, audit)
    return job.written


def _score_chunk(job: _Job, chunk: _Rows, header: csvformat.Header, sink: _Sink) -> None:
    """Validate one chunk; predict and write it while the file is still valid throughout."""
    X = _encode(chunk, header, job.problems)
    if X is None or job.problems.total:
        return  # after the first bad row only validation goes on
    charges, low, high = job.model.predict(X)
    sink.write(chunk, charges, low, high)
    if job.audit is not None:
        job.audit.add(X, charges, low, high, None if job.patients is None else chunk.column(job.patients))
    job.book.add(X, charges)
    job.written += len(X)


def _publish(
    tmp: Path, dest: Path, summary: Path | None, book: BookTotal, stack: contextlib.ExitStack, audit: RunLog | None
) -> None:
    """Rename the output (and the summary, written first) into place, once the audit log holds it."""
    summary_tmp = None
    if summary is not None:
        summary_tmp = _temp_path(summary)
        stack.callback(summary_tmp.unlink, missing_ok=True)
        _write(summary_tmp, summary, summary_json(book))
    if audit is not None:
        audit.commit()
    os.replace(tmp, dest)
    if summary is not None and summary_tmp is not None:
        os.replace(summary_tmp, summary)


def _format(path: Path, role: str) -> Format:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise BatchError(f"{path}: cannot tell the {role} format from '{path.suffix}'; use one of {known}")
    return fmt


def _check_paths(source: Path, dest: Path, summary: Path | None) -> Path | None:
    if not source.is_file():
        raise BatchError(f"{source}: {'is a directory' if source.is_dir() else 'no such file'}")
    outputs = {"output": dest} | ({"summary": Path(summary)} if summary is not None else {})
    for role, out in outputs.items():
        if not out.parent.is_dir():
            raise BatchError(f"{out}: the {role} directory {out.parent} does not exist")
        if out.is_dir():
            raise BatchError(f"{out}: is a directory")
    checked = outputs.get("summary")
    if checked is not None and checked.resolve() in (source.resolve(), dest.resolve()):
        raise BatchError(f"{checked}: the summary must not overwrite the input or the output file")
    return checked


# -- input ------------------------------------------------------------------------------
def _csv_input(path: Path, chunk_rows: int, stack: contextlib.ExitStack) -> _Input:
    """A CSV's header and records, read by the one CSV module."""
    try:
        handle = stack.enter_context(path.open("rb"))
    except OSError as exc:
        raise BatchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    reader = csvformat.Reader(_read_blocks(handle, path), target=False)

    chunks = (_Rows(chunk.lines, cells=chunk.rows, plain=reader.plain) for chunk in reader.chunks(chunk_rows))
    return _Input(reader.header, chunks, reader.problems)


def _read_blocks(handle: IO[bytes], path: Path) -> Iterator[bytes]:
    try:
        yield from csvformat.file_blocks(handle)
    except OSError as exc:
        raise BatchError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _pyarrow() -> Any:
    """Import pyarrow and its Parquet module, or say how to install it."""
    try:
        pa = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise BatchError("Parquet files need pyarrow: pip install 'chargecast[batch]'") from None
    return pa


def _parquet_input(path: Path, chunk_rows: int, stack: contextlib.ExitStack) -> _Input:
    """A Parquet file's columns (under the CSV header rules) and its rows, numbered from 1."""
    pa = _pyarrow()
    try:
        pf = pa.parquet.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise BatchError(f"{path}: not a readable Parquet file ({exc})") from None
    stack.callback(pf.close)
    header = csvformat.read_header(list(pf.schema_arrow.names), "\n", target=False)

    def chunks() -> Iterator[_Rows]:
        first = 1
        batches = pf.iter_batches(batch_size=chunk_rows)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise BatchError(f"{path}: cannot read ({exc})") from None
            if batch.num_rows:
                yield _Rows(range(first, first + batch.num_rows), table=pa.Table.from_batches([batch]))
                first += batch.num_rows
        if first == 1:  # the rule a CSV with only a header meets too
            raise ValidationError([schema.Issue("file", "has no data rows")])

    return _Input(header, chunks(), csvformat.Problems(), pf.schema_arrow)


def _encode(chunk: _Rows, header: csvformat.Header, problems: csvformat.Problems) -> Array | None:
    """Validate a chunk with the schema; its problems are numbered by line (or Parquet row)."""
    if chunk.cells is not None:
        X, found, count = csvformat.encode(csvformat.Chunk(chunk.cells, list(chunk.lines)), header)
        if found:
            problems.add(found, count)
        return X
    columns = {name: np.array(chunk.table.column(header.columns[name]).to_pylist(), dtype=object) for name in FEATURES}
    try:
        return schema.encode_columns(columns, first_row=0)
    except ValidationError as exc:
        problems.add([dataclasses.replace(i, line=chunk.lines[i.line or 0]) for i in exc.issues], exc.total)
        return None


# -- output -----------------------------------------------------------------------------
def _temp_path(dest: Path) -> Path:
    """A new hidden file beside ``dest`` (same file system, so the final rename is atomic)."""
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise BatchError(f"{dest}: cannot write in {dest.parent} ({exc.strerror or exc})") from None
        return tmp
    raise BatchError(f"{dest}: cannot create a temporary file in {dest.parent}")


def _write(path: Path, dest: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise BatchError(f"{dest}: cannot write ({exc.strerror or exc})") from None


class _Sink:
    """Where scored chunks go: the temporary output file, in the output's format."""

    def write(self, chunk: _Rows, charges: Array, low: Array, high: Array) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvSink(_Sink):
    """CSV out through :class:`csvformat.Writer`: the bytes the API's CSV route sends."""

    def __init__(self, path: Path, dest: Path, header: csvformat.Header) -> None:
        self.dest = dest
        self.writer = csvformat.Writer(header)
        try:
            self.out: IO[bytes] = path.open("wb")
        except OSError as exc:
            raise BatchError(f"{dest}: cannot write ({exc.strerror or exc})") from None
        self._put(self.writer.head)

    def write(self, chunk: _Rows, charges: Array, low: Array, high: Array) -> None:
        self._put(self.writer.rows(chunk.text(), charges, low, high, plain=chunk.plain))

    def _put(self, data: bytes) -> None:
        try:
            self.out.write(data)
        except OSError as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc.strerror or exc})") from None

    def close(self) -> None:
        try:
            self.out.close()
        except OSError as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc.strerror or exc})") from None


class _ParquetSink(_Sink):
    """Parquet out: the input's columns (their types, for a Parquet input) and three float64s."""

    def __init__(self, path: Path, dest: Path, opened: _Input) -> None:
        pa = self.pa = _pyarrow()
        self.dest = dest
        given = opened.arrow_schema  # a Parquet input's types; a CSV's cells are text
        fields = list(given) if given is not None else [pa.field(n, pa.string()) for n in opened.header.cells]
        self.schema = pa.schema([*fields, *(pa.field(name, pa.float64()) for name in OUTPUT_COLUMNS)])
        try:
            self.writer = pa.parquet.ParquetWriter(str(path), self.schema)
        except (pa.ArrowException, OSError) as exc:
            raise BatchError(f"{dest}: cannot write these columns as Parquet ({exc})") from None

    def write(self, chunk: _Rows, charges: Array, low: Array, high: Array) -> None:
        pa = self.pa
        if chunk.table is not None:
            inputs = list(chunk.table.columns)
        else:
            inputs = [pa.array(list(column), pa.string()) for column in zip(*(chunk.cells or []), strict=True)]
        table = pa.Table.from_arrays([*inputs, *(pa.array(a) for a in (charges, low, high))], schema=self.schema)
        try:
            self.writer.write_table(table)
        except (pa.ArrowException, OSError) as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc})") from None

    def close(self) -> None:
        try:
            self.writer.close()
        except (self.pa.ArrowException, OSError) as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc})") from None
