"""Load the insurance table into arrays, and fetch the canonical copy reproducibly.

Two kinds of failure are kept apart on purpose: a file that cannot be read or fetched
is a :class:`DataError` (fix the path, the network or the cache), while a file whose
contents break the schema is a :class:`~chargecast.schema.ValidationError` whose issues
name the line, column, value and rule, so a user can fix the CSV without a debugger.
The file is read by :mod:`chargecast.csvformat`, so training accepts exactly the files the
API and ``chargecast predict`` accept, and reports problems by the same line numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from chargecast import csvformat
from chargecast.schema import TARGET, Issue
from chargecast.settings import Settings

_CHUNK: Final = 64 * 1024
_POSITIVE: Final = "must be a positive number"


class DataError(Exception):
    """The data could not be read or downloaded (as opposed to being invalid)."""


@dataclass(frozen=True)
class Dataset:
    """The encoded table plus its provenance, so a model can record what it was trained on.

    ``X`` holds the features in ``schema.FEATURES`` order (categories as their index in
    ``choices``); both arrays are read-only so a frozen dataset cannot change under a model.
    """

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    sha256: str
    source: str

    @property
    def rows(self) -> int:
        return len(self.y)


def load_csv(path: Path) -> Dataset:
    """Read and validate a CSV with the six feature columns and ``charges``.

    Every problem in the file is collected into one :class:`ValidationError` (sorted by
    line, at most ``MAX_REPORTED_ISSUES`` shown) rather than stopping at the first.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    features, y = _parse(raw)
    features.setflags(write=False)
    y.setflags(write=False)
    return Dataset(X=features, y=y, sha256=hashlib.sha256(raw).hexdigest(), source=str(path))


def _parse(raw: bytes) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every row through the one CSV module (the API's and ``chargecast predict``'s rules),
    with ``charges`` required; every problem is collected, by line, before failing."""
    reader = csvformat.Reader([raw], target=True)
    target = reader.header.columns[TARGET]
    features: list[npt.NDArray[np.float64]] = []
    charges: list[float] = []
    for chunk in reader.chunks():
        X, found, count = csvformat.encode(chunk, reader.header)
        reader.problems.add(found, count)
        for line, row in zip(chunk.lines, chunk.rows, strict=True):
            charge = _charge(row[target], line)
            if isinstance(charge, Issue):
                reader.problems.add([charge])
            else:
                charges.append(charge)
        if X is not None:
            features.append(X)
    reader.problems.raise_if_any()
    return np.concatenate(features), np.array(charges, dtype=np.float64)


def _charge(cell: str, line: int) -> float | Issue:
    if not cell.strip():
        return Issue(TARGET, "is required", None, line)
    try:
        value = float(cell)
    except ValueError:
        return Issue(TARGET, _POSITIVE, cell, line)
    if not math.isfinite(value) or value <= 0:
        return Issue(TARGET, _POSITIVE, cell, line)
    return value


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_canonical(settings: Settings) -> Path:
    """Return a verified local copy of ``settings.data_url``, downloading it if needed.

    The cache name carries the expected hash, and the cached file is re-hashed on every
    call, so a changed ``data_sha256`` or a corrupted cache never goes unnoticed. Bytes
    only reach the final name after their checksum matched (atomic ``os.replace``), so
    an interrupted or tampered download can never be mistaken for the real data.
    """
    url, expected = settings.data_url, settings.data_sha256
    target = settings.cache_dir / f"insurance-{expected[:12]}.csv"
    try:
        if target.is_file():
            if _sha256_file(target) == expected:
                return target
            target.unlink()
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=settings.cache_dir, prefix=".insurance-", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot use cache directory {settings.cache_dir}: {exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _download(url, out, settings.download_timeout)
        if got != expected:
            raise DataError(f"checksum mismatch for {url}: expected sha256 {expected}, got {got}")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def _download(url: str, out: BinaryIO, timeout: float) -> str:
    """Stream ``url`` into ``out``; return the sha256 of what was received."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            received = 0
            # read(n) returns b"" when the peer closes early instead of raising, so a
            # short body is only detected by comparing with Content-Length below.
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"download of {url} failed: cannot connect ({exc.reason})") from None
    except TimeoutError:
        raise DataError(f"download of {url} failed: timed out after {timeout:g} s") from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise DataError(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
    if length is not None and length.isdigit() and received != int(length):
        raise DataError(f"download of {url} was interrupted: received {received} of {int(length)} bytes")
    return digest.hexdigest()


def load_dataset(path: Path | None, settings: Settings) -> Dataset:
    """Load the training table: an explicit ``path`` wins, then ``settings.data``
    (``CHARGECAST_DATA``), and only then the verified canonical download."""
    chosen = path if path is not None else settings.data
    if chosen is not None:
        return load_csv(chosen)
    dataset = load_csv(fetch_canonical(settings))
    # Record where the bytes came from, not the cache location they happen to sit in.
    return Dataset(X=dataset.X, y=dataset.y, sha256=dataset.sha256, source=settings.data_url)
