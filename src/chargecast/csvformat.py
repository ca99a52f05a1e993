"""The one CSV format for patient records: how a file is read, numbered and written back.

Training data, the CSV route and ``chargecast predict`` all go through here, so one file
means the same everywhere (they used to have three readers with three sets of rules):

- a header is matched case-insensitively and without surrounding space (a byte-order mark
  is dropped); a file whose only column holds ``;`` or tabs gets a hint about the separator;
- a record is numbered by the physical line it starts on, the header being line 1, so a
  quoted newline or a blank line never shifts the numbers (errors say "line N");
- for scoring, an input column named like an output (``charges``, ``charges_low``,
  ``charges_high``) is refused instead of being silently replaced;
- output rows are the input cells as they came, quoted only where CSV needs it, then the
  three forecast columns rounded to cents, with the input's line ending.

Text is decoded a block (about 256 KiB, cut after a newline) at a time, from a file or from
an upload held in memory, so memory holds one block and one chunk of records, and one
character outside Latin-1 never makes Python hold a whole file at four bytes per character.
The stdlib ``csv`` module parses: no pandas or pyarrow on the serving path.
"""

from __future__ import annotations

import csv
import io
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

import numpy as np
import numpy.typing as npt

from chargecast.schema import FEATURES, MAX_REPORTED_ISSUES, PATIENT_REF, TARGET, Issue, ValidationError, encode_columns

OUTPUT_COLUMNS: Final = (TARGET, f"{TARGET}_low", f"{TARGET}_high")
BLOCK: Final = 1 << 18
CHUNK_ROWS: Final = 32_768
BOM: Final = b"\xef\xbb\xbf"
Array = npt.NDArray[np.float64]


def normalize(name: str) -> str:
    """How a column name is matched: case and surrounding space do not count."""
    return name.strip().lower()


# -- bytes to lines ---------------------------------------------------------------------
def buffer_blocks(buffer: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Blocks of an in-memory upload (``start:end``), each cut after a newline."""
    end = len(buffer) if end is None else end
    pos = start
    with memoryview(buffer) as view:
        while pos < end:
            stop = min(pos + BLOCK, end)
            if stop < end:
                cut = buffer.rfind(b"\n", pos, stop)
                if cut < 0:  # one line longer than a block: take the whole line
                    cut = buffer.find(b"\n", stop, end)
                stop = end if cut < 0 else cut + 1
            yield bytes(view[pos:stop])
            pos = stop


def file_blocks(source: IO[bytes]) -> Iterator[bytes]:
    """Blocks of a binary file, each cut after a newline (the remainder carried over)."""
    carry = b""
    while block := source.read(BLOCK):
        block = carry + block
        cut = block.rfind(b"\n")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1 :]
        yield block[: cut + 1]
    if carry:
        yield carry


class Text:
    """A CSV's text, decoded a block at a time, and what reading it has shown so far.

    Bad UTF-8 and NUL bytes (a binary file) are errors naming the line; a newline byte never
    occurs inside a UTF-8 sequence, so cutting after one is safe. Lines are split in C
    (``io.StringIO``), not one by one in Python. ``quoted`` says whether any block read so
    far held a quote: without one, no cell can hold a comma or a newline.
    """

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks = iter(blocks)
        self.quoted = False
        self.first_line = ""

    def lines(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._decoded())

    def _decoded(self) -> Iterator[io.StringIO]:
        line = 1
        for raw in self._blocks:
            block = raw[len(BOM) :] if line == 1 and raw.startswith(BOM) else raw
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _file_error("must be UTF-8 encoded CSV text", line + line_breaks(block, 0, exc.start)) from None
            if "\x00" in text:  # the csv module accepts NUL bytes since 3.11; a NUL means a binary file
                raise _file_error(
                    "must be CSV text, not a binary file", line + line_breaks(text, 0, text.index("\x00"))
                )
            if not self.first_line:
                self.first_line = io.StringIO(text, newline="").readline()
            self.quoted = self.quoted or '"' in text
            yield io.StringIO(text, newline="")
            line += line_breaks(text)


def text_lines(blocks: Iterable[bytes]) -> Iterator[str]:
    """Text lines with their endings, decoded a block at a time (see :class:`Text`)."""
    return Text(blocks).lines()


def line_breaks(data: str | bytes | bytearray, start: int = 0, end: int | None = None) -> int:
    """Line breaks as the reader counts them: ``\\n``, ``\\r\\n`` and a lone ``\\r`` (old Mac files)."""
    if isinstance(data, str):
        return data.count("\n", start, end) + data.count("\r", start, end) - data.count("\r\n", start, end)
    return data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(b"\r\n", start, end)


def _file_error(rule: str, line: int | None = None) -> ValidationError:
    return ValidationError([Issue("file", rule, None, line)])


# -- the header -------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """The header row: its cells as they came, where each needed column is, the line ending."""

    cells: list[str]
    columns: dict[str, int]
    eol: str

    @property
    def width(self) -> int:
        return len(self.cells)


def read_header(cells: Sequence[str], eol: str, *, target: bool) -> Header:
    """Match the header: the six inputs (and ``charges`` when ``target``) once each.

    Without ``target`` (scoring) a column named like an output is refused: it would be
    replaced by the forecast, and a file that still holds real charges is a mistake.
    """
    names = [normalize(c) for c in cells]
    wanted = (*FEATURES, TARGET) if target else FEATURES
    issues: list[Issue] = []
    if not target:
        issues += [
            Issue(name, "is a column chargecast adds; remove or rename it", None, 1)
            for name in OUTPUT_COLUMNS
            if name in names
        ]
    for name in wanted:
        count = names.count(name)
        if count == 0:
            issues.append(Issue(name, f"column is required{_separator_hint(cells)}", None, 1))
        elif count > 1:
            issues.append(Issue(name, f"column appears {count} times", None, 1))
    if (refs := names.count(PATIENT_REF)) > 1:  # optional, but which one names the patient?
        issues.append(Issue(PATIENT_REF, f"column appears {refs} times", None, 1))
    if issues:
        raise ValidationError(issues)
    return Header(list(cells), {name: names.index(name) for name in wanted}, eol)


def _separator_hint(cells: Sequence[str]) -> str:
    if len(cells) == 1:
        for sep, label in ((";", "semicolons"), ("\t", "tabs")):
            if sep in cells[0]:
                return f" (the header looks separated by {label}: chargecast reads comma-separated CSV)"
    return ""


# -- records ----------------------------------------------------------------------------
@dataclass
class Chunk:
    """Up to ``CHUNK_ROWS`` records: their cells and the line each starts on."""

    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, index: int) -> list[str]:
        return list(map(operator.itemgetter(index), self.rows))


@dataclass
class Problems:
    """Every broken rule in a file, the first ``MAX_REPORTED_ISSUES`` kept, all counted."""

    issues: list[Issue] = field(default_factory=list)
    total: int = 0

    def add(self, found: Sequence[Issue], count: int | None = None) -> None:
        self.total += len(found) if count is None else count
        self.issues.extend(found[: max(0, MAX_REPORTED_ISSUES - len(self.issues))])

    def raise_if_any(self) -> None:
        if self.total:
            shown = sorted(self.issues, key=lambda i: i.line or 0)[:MAX_REPORTED_ISSUES]
            raise ValidationError(shown, self.total > len(shown), self.total)


class Reader:
    """A CSV's header and its records, chunk by chunk, with physical line numbers.

    Blank lines carry no record; a record whose cell count differs from the header's is a
    problem (its cells cannot be matched to columns) and is left out of the chunks.
    """

    def __init__(self, source: Iterable[bytes] | Text, *, target: bool, max_rows: int | None = None) -> None:
        self.text = source if isinstance(source, Text) else Text(source)
        self._reader = csv.reader(self.text.lines())
        self.problems = Problems()
        self.max_rows = max_rows
        self.rows = 0
        try:
            cells: list[str] = []
            while not cells:  # blank lines before the header carry nothing (lines keep their numbers)
                cells = next(self._reader)
        except StopIteration:
            raise _file_error("has no data rows") from None
        except csv.Error as exc:
            raise _file_error(f"is not valid CSV: {exc}", self._reader.line_num) from None
        first = self.text.first_line
        eol = next((end for end in ("\r\n", "\r") if first.endswith(end)), "\n")
        self.header = read_header(cells, eol, target=target)

    @property
    def plain(self) -> bool:
        """No quote anywhere read so far: every record is its cells joined by commas."""
        return not self.text.quoted

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[Chunk]:
        width, reader, chunk = self.header.width, self._reader, Chunk()
        previous = reader.line_num
        try:
            for cells in reader:  # the loop runs per record: kept to a few operations
                start, previous = previous + 1, reader.line_num
                if not cells:
                    continue
                if len(cells) != width:
                    self.rows += 1
                    self.problems.add([Issue("record", f"has {len(cells)} cells, the header has {width}", None, start)])
                    continue
                chunk.rows.append(cells)
                chunk.lines.append(start)
                if len(chunk.rows) >= size:
                    yield self._counted(chunk)
                    chunk = Chunk()
        except csv.Error as exc:
            raise _file_error(f"is not valid CSV: {exc}", reader.line_num) from None
        if chunk.rows:
            yield self._counted(chunk)
        if not self.rows:
            raise _file_error("has no data rows")

    def _counted(self, chunk: Chunk) -> Chunk:
        self.rows += len(chunk.rows)
        if self.max_rows is not None and self.rows > self.max_rows:
            raise TooManyRowsError(self.max_rows)
        return chunk


class TooManyRowsError(Exception):
    """More records than the caller allows; ``limit`` says how many."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} data rows")
        self.limit = limit


def encode(chunk: Chunk, header: Header) -> tuple[Array | None, list[Issue], int]:
    """The chunk's inputs as an (n, 6) array, or None and its problems (with their lines)."""
    columns = {name: chunk.column(header.columns[name]) for name in FEATURES}
    if (ref := patient_ref_column(header)) is not None:  # optional; other columns pass through unread
        columns[PATIENT_REF] = chunk.column(ref)
    try:
        return encode_columns(columns, first_row=0), [], 0
    except ValidationError as exc:
        found = [Issue(i.field, i.rule, i.value, chunk.lines[i.line or 0]) for i in exc.issues]
        return None, found, exc.total


def patient_ref_column(header: Header) -> int | None:
    """Where the optional ``patient_ref`` column is (its header cell matched as the inputs are)."""
    for i, cell in enumerate(header.cells):
        if cell.strip().lower() == PATIENT_REF:
            return i
    return None


# -- writing ----------------------------------------------------------------------------
class _Sink:
    """A write-only text sink for csv.writer that hands out what was written."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def take(self) -> str:
        out = "".join(self._parts)
        self._parts.clear()
        return out


class Writer:
    """Output rows: the input cells as they came, quoted only where CSV needs it, then the
    three forecast columns in cents; the same bytes for the CLI and the API.

    The csv module quotes a cell only for the characters of its own line terminator, so
    with ``\\n`` endings a cell holding a lone ``\\r`` would be written bare and read back
    as two lines. Such rows (rare: the cell must have been quoted in the input) are written
    again with ``\\r\\n`` as the terminator, which quotes both, and then given the file's ending.
    """

    def __init__(self, header: Header) -> None:
        self._sink = _Sink()
        self._eol = header.eol
        self._stray = {"\n": "\r", "\r": "\n"}.get(header.eol, "")
        self._writer = csv.writer(self._sink, lineterminator=header.eol)
        self._careful = csv.writer(self._sink, lineterminator="\r\n")
        self.head = self._write([[*header.cells, *OUTPUT_COLUMNS]])

    def rows(
        self, rows: Sequence[Sequence[str]], charges: Array, low: Array, high: Array, *, plain: bool = False
    ) -> bytes:
        """``plain``: no cell holds a comma, quote or newline (the reader saw no quote), so a
        row is its cells joined by commas: the csv module would write the same, slower."""
        cents = zip(charges.tolist(), low.tolist(), high.tolist(), strict=True)
        if plain:
            eol = self._eol
            tails = [f"{c:.2f},{lo:.2f},{hi:.2f}{eol}" for c, lo, hi in cents]
            return "".join([",".join(row) + "," + tail for row, tail in zip(rows, tails, strict=True)]).encode()
        return self._write(
            [[*row, f"{c:.2f}", f"{lo:.2f}", f"{hi:.2f}"] for row, (c, lo, hi) in zip(rows, cents, strict=True)]
        )

    def _write(self, rows: list[list[str]]) -> bytes:
        self._writer.writerows(rows)
        text = self._sink.take()
        if self._stray and self._stray in text:  # only a cell can hold it: write those rows again
            lines = []
            for row in rows:
                self._careful.writerow(row)
                lines.append(self._sink.take()[:-2] + self._eol)
            text = "".join(lines)
        return text.encode()
