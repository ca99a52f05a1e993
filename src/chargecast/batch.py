"""Batch scoring: stream a CSV or Parquet file of patients through the model, chunk by chunk.

Files can be far larger than memory, so nothing here ever holds more than a couple of
chunks: pyarrow reads one block at a time, each chunk is validated, predicted and handed
to a writer thread (which formats the previous chunk on the second core while this one is
encoded), then dropped. Output is all or nothing: it is written to a temporary file beside
``dest`` and renamed into place only when every row was valid, so a failed run never
leaves a truncated file or clobbers an earlier result.

pyarrow is an optional extra (``chargecast[batch]``), imported on first use so that the
serving path never pays for it.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import importlib
import os
import secrets
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt

from chargecast import schema
from chargecast.model.totals import BookTotal, summary_json
from chargecast.schema import (
    FIELDS,
    MAX_REPORTED_ISSUES,
    TARGET,
    CategoryField,
    Field,
    Issue,
    ValidationError,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from chargecast.model.artifact import Artifact

Format = Literal["csv", "parquet"]
FORMATS: Final[dict[str, Format]] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Appended to every output row; an input column of the same name is dropped (scoring the
# training file, or re-scoring an earlier output, must not produce duplicate columns).
OUTPUT_COLUMNS: Final = (TARGET, f"{TARGET}_low", f"{TARGET}_high")
SAMPLE_BYTES: Final = 1 << 16  # sniffed up front: binary check and longest line
# pyarrow's CSV read unit: a row must fit in one, and the reader keeps ~16 in memory; chunks
# are assembled from blocks, so the block size need not grow with chunk_rows.
BLOCK: Final = 1 << 20
LONG_LABEL: Final = 64  # longer category values are shortened before they reach numpy

IntArray = npt.NDArray[np.int64]
Chunks = Generator["_Chunk", None, None]


class BatchError(Exception):
    """The input cannot be read or the output cannot be written; the message says which and why."""


@dataclass
class _Chunk:
    """A slice of the input: its rows, the file line (or row) number of each, rows consumed."""

    table: pa.Table
    lines: IntArray
    rows_read: int


def score_file(
    source: Path,
    dest: Path,
    artifact: Artifact,
    *,
    chunk_rows: int = 262_144,
    progress: Callable[[int], None] | None = None,
    summary: Path | None = None,
) -> int:
    """Score every row of ``source`` into ``dest``; return the number of rows written.

    Formats follow the suffixes (``.csv``, ``.parquet``/``.pq``; they may differ). The
    output keeps the input's columns and values as read and appends ``charges``,
    ``charges_low`` and ``charges_high``. Blank CSV lines are skipped. ``summary`` gets
    :func:`summary_json`: the row count and the book's total with its interval.

    Raises :class:`~chargecast.schema.ValidationError` for missing columns (at once) or bad
    rows (after scanning the whole file, so the user sees every problem's line number and
    the total in one go), and :class:`BatchError` when a file cannot be read or written.
    On any failure ``dest`` and ``summary`` are left as they were. ``progress`` gets the
    rows read per chunk.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    source, dest = Path(source), Path(dest)
    in_format, out_format = _format(source, "input"), _format(dest, "output")
    pa = _pyarrow()
    if not source.is_file():
        raise BatchError(f"{source}: {'is a directory' if source.is_dir() else 'no such file'}")
    outputs = {"output": dest} | ({"summary": Path(summary)} if summary is not None else {})
    for role, out in outputs.items():
        if not out.parent.is_dir():
            raise BatchError(f"{out}: the {role} directory {out.parent} does not exist")
        if out.is_dir():
            raise BatchError(f"{out}: is a directory")
    summary = outputs.get("summary")
    if summary is not None and summary.resolve() in (source.resolve(), dest.resolve()):
        raise BatchError(f"{summary}: the summary must not overwrite the input or the output file")
    book = BookTotal(artifact)

    issues = _Issues()
    if in_format == "csv":
        in_schema, chunks = _csv_chunks(pa, source, chunk_rows, issues)
    else:
        in_schema, chunks = _parquet_chunks(pa, source, chunk_rows)
    keep = [i for i, name in enumerate(in_schema.names) if name not in OUTPUT_COLUMNS]
    out_schema = pa.schema(
        [in_schema.field(i) for i in keep] + [pa.field(name, pa.float64()) for name in OUTPUT_COLUMNS],
        metadata=in_schema.metadata,
    )
    tmp = _temp_path(dest)
    summary_tmp: Path | None = None
    sink: _Sink | None = None
    written = 0
    try:
        with contextlib.closing(chunks), ThreadPoolExecutor(1, thread_name_prefix="batch-writer") as pool:
            sink = _Sink(pa, tmp, dest, out_format, out_schema, pool)
            for chunk in chunks:
                X = _encode(pa, chunk, issues)
                if issues.total and sink is not None:
                    sink.abort()  # keep scanning for more bad rows, but stop writing
                    sink = None
                if sink is not None and X is not None and len(X):
                    charges, low, high = artifact.predict(X)
                    columns = [chunk.table.column(i) for i in keep] + [pa.array(a) for a in (charges, low, high)]
                    sink.write(pa.Table.from_arrays(columns, schema=out_schema))
                    book.add(X, charges)
                    written += len(X)
                if progress is not None:
                    progress(chunk.rows_read)
            if issues.total:
                raise issues.error()
            assert sink is not None
            sink.close()
            sink = None
        if summary is not None:  # written before either file is renamed into place
            summary_tmp = _temp_path(summary)
            try:
                summary_tmp.write_bytes(summary_json(book))
            except OSError as exc:
                raise BatchError(f"{summary}: cannot write ({exc.strerror or exc})") from None
        os.replace(tmp, dest)
        if summary is not None and summary_tmp is not None:
            os.replace(summary_tmp, summary)
            summary_tmp = None
    except BaseException:
        if sink is not None:
            sink.abort()
        tmp.unlink(missing_ok=True)
        if summary_tmp is not None:
            summary_tmp.unlink(missing_ok=True)
        raise
    return written


# -- input ---------------------------------------------------------------------------------


def _pyarrow() -> Any:
    """Import pyarrow and the submodules used here, or say how to install it."""
    try:
        pa = importlib.import_module("pyarrow")
        for sub in ("compute", "csv", "parquet"):
            importlib.import_module(f"pyarrow.{sub}")
    except ImportError:
        raise BatchError(
            "batch scoring of CSV and Parquet files needs pyarrow: pip install 'chargecast[batch]'"
        ) from None
    return pa


def _format(path: Path, role: str) -> Format:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise BatchError(f"{path}: cannot tell the {role} format from '{path.suffix}'; use one of {known}")
    return fmt


def _check_header(names: Sequence[str]) -> None:
    """Missing or repeated feature columns fail before any row is read."""
    # A zero-row table lets the schema phrase the missing-column error itself.
    schema.encode_columns({name: np.empty(0, dtype=str) for name in names})
    repeated = [f.name for f in FIELDS if names.count(f.name) > 1]
    if repeated:
        raise ValidationError([Issue(name, "column appears more than once") for name in repeated])


def _csv_chunks(pa: Any, path: Path, chunk_rows: int, issues: _Issues) -> tuple[Any, Chunks]:
    """Open a CSV with every column as text, so a bad cell is a row issue, not a parse error.

    Reading runs on one thread with empty lines kept as rows: that is what makes pyarrow
    report the line number of a malformed row, and lets every row's line be counted.
    """
    try:
        with path.open("rb") as fh:
            sample = fh.read(SAMPLE_BYTES)
            whole = not fh.read(1)
    except OSError as exc:
        raise BatchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not sample.strip():
        raise BatchError(f"{path}: the file is empty; a CSV needs a header line naming the columns")
    try:
        if b"\x00" in sample:
            raise ValueError("NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)
    except ValueError:
        raise BatchError(
            f"{path}: not a UTF-8 text CSV file (binary data, or another text encoding: save it as UTF-8)"
        ) from None
    if whole and not sample.endswith((b"\n", b"\r")):
        sample += b"\n"  # pyarrow cannot read a lone header line without its newline
    if not whole and not any(end in sample for end in (b"\n", b"\r")):
        raise BatchError(f"{path}: the first line is longer than {SAMPLE_BYTES} bytes; is this a CSV file?")
    header = sample.splitlines()[0] + b"\n"
    if not header.strip():
        raise BatchError(f"{path}: line 1 is blank; the first line must name the columns")
    block = max(BLOCK, 16 * max(len(line) for line in sample.splitlines()))

    def source() -> Any:
        return pa.py_buffer(sample) if whole else str(path)

    lines = _LineNumbers(first=2)  # line 1 is the header

    def malformed(row: Any) -> str:  # called on this thread, inside read_next_batch
        number = None if row.number is None or row.number < 0 else int(row.number)
        if number is not None:
            lines.skipped.append(number)
        rule = f"has {row.actual_columns} fields, expected {row.expected_columns}"
        issues.add([Issue("record", rule, str(row.text)[:200], number)], 1)
        return "skip"

    read = pa.csv.ReadOptions(block_size=block, use_threads=False)
    parse = pa.csv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=malformed)
    try:
        names = list(pa.csv.read_csv(pa.py_buffer(header)).schema.names)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path}: cannot read the CSV header ({exc})") from None
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        raise BatchError(f"{path}: the header is one column, {names[0][:60]!r}; columns must be separated by commas")
    _check_header(names)
    convert = pa.csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    try:
        reader = pa.csv.open_csv(source(), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(path, exc) from None

    def chunks() -> Chunks:
        try:
            for table in _rechunk(pa, _batches(pa, reader, path), chunk_rows):
                rows = lines.take(table.num_rows)
                yield _drop_blank(pa, _Chunk(table, rows, table.num_rows))
        finally:
            reader.close()

    return reader.schema, chunks()


def _batches(pa: Any, reader: Any, path: Path) -> Iterator[Any]:
    """The reader's record batches, with read errors turned into a :class:`BatchError`."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _read_error(path, exc) from None
        if batch.num_rows:
            yield batch


def _read_error(path: Path, exc: Exception) -> BatchError:
    hint = "; is the file UTF-8 text?" if "UTF8" in str(exc) else ""
    return BatchError(f"{path}: cannot read as CSV ({exc}){hint}")


def _parquet_chunks(pa: Any, path: Path, chunk_rows: int) -> tuple[Any, Chunks]:
    """Open a Parquet file; rows are numbered from 1 in error messages."""
    try:
        pf = pa.parquet.ParquetFile(str(path))
        in_schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise BatchError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_header(list(in_schema.names))
    lines = _LineNumbers(first=1)

    def batches() -> Iterator[Any]:
        it = pf.iter_batches(batch_size=chunk_rows)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise BatchError(f"{path}: cannot read ({exc})") from None
            if batch.num_rows:
                yield batch

    def chunks() -> Chunks:
        try:
            for table in _rechunk(pa, batches(), chunk_rows):
                yield _Chunk(table, lines.take(table.num_rows), table.num_rows)
        finally:
            pf.close()

    return in_schema, chunks()


def _rechunk(pa: Any, batches: Iterator[Any], size: int) -> Iterator[Any]:
    """Regroup record batches into tables of exactly ``size`` rows (the last may be short)."""
    parts: list[Any] = []
    count = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            take = min(size - count, batch.num_rows - start)
            parts.append(batch.slice(start, take))
            start += take
            count += take
            if count == size:
                yield pa.Table.from_batches(parts).combine_chunks()
                parts, count = [], 0
    if parts:
        yield pa.Table.from_batches(parts).combine_chunks()


class _LineNumbers:
    """Numbers rows by physical line, stepping over the malformed lines pyarrow skipped."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.skipped: deque[int] = deque()  # filled by the reader, ascending

    def take(self, n: int) -> IntArray:
        end = self.next + n
        gone = []
        while self.skipped and self.skipped[0] < end:
            line = self.skipped.popleft()
            if line >= self.next:
                gone.append(line)
                end += 1
        rows = np.arange(self.next, end, dtype=np.int64)
        if gone:
            rows = np.setdiff1d(rows, gone, assume_unique=True)
        self.next = end
        return rows


def _drop_blank(pa: Any, chunk: _Chunk) -> _Chunk:
    """Remove rows whose every field is empty (blank lines), keeping the others' numbers."""
    table = chunk.table
    if pa.compute.min(pa.compute.binary_length(table.column(0))).as_py() != 0:
        return chunk  # the usual case, decided by one column
    blank = np.ones(table.num_rows, dtype=bool)
    for i in range(table.num_columns):
        blank &= pa.compute.equal(pa.compute.binary_length(table.column(i)), 0).to_numpy()
    if not blank.any():
        return chunk
    return _Chunk(table.filter(pa.array(~blank)), chunk.lines[~blank], chunk.rows_read)


# -- validation ----------------------------------------------------------------------------


class _Issues:
    """The first rows' issues across the whole file (in line order) and the total count."""

    def __init__(self) -> None:
        self.first: list[Issue] = []
        self.total = 0

    def add(self, found: Sequence[Issue], total: int) -> None:
        self.first.extend(found)
        self.first.sort(key=lambda i: -1 if i.row is None else i.row)
        del self.first[MAX_REPORTED_ISSUES:]
        self.total += total

    def error(self) -> ValidationError:
        return ValidationError(list(self.first), self.total > len(self.first), self.total)


def _encode(pa: Any, chunk: _Chunk, issues: _Issues) -> npt.NDArray[np.float64] | None:
    """Validate one chunk with the schema; record its issues by file line, None if any."""
    arrays = {spec.name: chunk.table.column(spec.name).combine_chunks() for spec in FIELDS}
    columns = {
        spec.name: _category(pa, spec, arrays[spec.name])
        if isinstance(spec, CategoryField)
        else _number(pa, arrays[spec.name])
        for spec in FIELDS
    }
    try:
        return schema.encode_columns(columns, first_row=0)
    except ValidationError:
        pass
    # Rare path: validate the values as read, so that issues quote the file's text ("17",
    # not 17.0), and number each issue by its line in the file.
    try:
        schema.encode_columns({spec.name: _python(arrays[spec.name], spec) for spec in FIELDS}, first_row=0)
    except ValidationError as err:
        lines = chunk.lines
        found = [i if i.row is None else dataclasses.replace(i, row=int(lines[i.row])) for i in err.issues]
        issues.add(found, err.total)
    else:  # pragma: no cover - both paths apply the same schema
        raise AssertionError("fast and exact validation disagree")
    return None


def _number(pa: Any, array: Any) -> npt.NDArray[Any]:
    """Floats via pyarrow's fast cast; anything it cannot parse goes to the schema as is."""
    t = pa.types
    kind = array.type
    if array.null_count == 0 and (
        t.is_string(kind) or t.is_large_string(kind) or t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind)
    ):
        try:
            values: npt.NDArray[np.float64] = pa.compute.cast(array, pa.float64()).to_numpy()
            return values
        except pa.ArrowInvalid:
            pass  # e.g. " 39" or "abc": the schema parses or reports each row
    return _python(array)


def _category(pa: Any, spec: Field, array: Any) -> npt.NDArray[Any]:
    """Category text as a numpy array, built from pyarrow's dictionary of distinct values.

    Building from the few distinct values avoids a Python object per row; very long values
    are shortened first, because numpy pads every string to the longest one.
    """
    t = pa.types
    if t.is_dictionary(array.type):
        encoded = array
    elif t.is_string(array.type) or t.is_large_string(array.type):
        encoded = pa.compute.dictionary_encode(array)
    else:
        return _python(array, spec)
    labels = encoded.dictionary.to_pylist()
    if not all(isinstance(label, str) for label in labels):
        return _python(array, spec)
    labels = [_shorten(spec, label) for label in labels]
    if encoded.null_count:
        lookup = np.array([*labels, None], dtype=object)
        index = encoded.indices.fill_null(len(labels))
    else:
        lookup = np.array(labels or [""], dtype=str)
        index = encoded.indices
    out: npt.NDArray[Any] = lookup[index.to_numpy(zero_copy_only=False)]
    return out


def _shorten(spec: Field, label: str) -> str:
    if len(label) <= LONG_LABEL:
        return label
    found = schema.check_value(spec, label)
    if isinstance(found, Issue) or not isinstance(spec, CategoryField):
        return label[: LONG_LABEL - 3] + "..."
    return spec.choices[int(found)]


def _python(array: Any, spec: Field | None = None) -> npt.NDArray[Any]:
    """The original values as Python objects (None for nulls): the slow, exact path."""
    values = array.to_pylist()
    if isinstance(spec, CategoryField):
        values = [_shorten(spec, v) if isinstance(v, str) else v for v in values]
    return np.fromiter(values, dtype=object, count=len(values))


# -- output --------------------------------------------------------------------------------


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


class _Sink:
    """Writes tables to the temporary file on a background thread, one chunk in flight."""

    def __init__(self, pa: Any, path: Path, dest: Path, fmt: Format, out_schema: Any, pool: ThreadPoolExecutor) -> None:
        self.path, self.dest, self.pool = path, dest, pool
        self.errors = (pa.ArrowException, OSError)
        self.pending: Future[None] | None = None
        self.stream: Any = None
        try:
            if fmt == "csv":
                self.stream = pa.output_stream(str(path), compression=None, buffer_size=1 << 20)
                self.writer = pa.csv.CSVWriter(self.stream, out_schema)
            else:
                self.writer = pa.parquet.ParquetWriter(str(path), out_schema)
        except self.errors as exc:
            if self.stream is not None:
                self.stream.close()
            raise BatchError(f"{dest}: cannot write these columns as {fmt} ({exc})") from None

    def write(self, table: Any) -> None:
        self._wait()
        self.pending = self.pool.submit(self.writer.write_table, table)

    def close(self) -> None:
        self._wait()
        try:
            self.writer.close()
            if self.stream is not None:
                self.stream.close()
        except self.errors as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc})") from None

    def abort(self) -> None:
        """Stop writing and release the file (its removal is the caller's job)."""
        with contextlib.suppress(Exception):
            self.close()
        self.path.unlink(missing_ok=True)

    def _wait(self) -> None:
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        try:
            pending.result()
        except self.errors as exc:
            raise BatchError(f"{self.dest}: cannot write ({exc})") from None
