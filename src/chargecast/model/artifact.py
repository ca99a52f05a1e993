"""The model artifact: a directory the service can load fast and trust.

``metadata.json`` lists every other file the loader reads with its sha256; loading checks
them all before parsing anything. Nothing is pickled: the model is JSON plus a ``.npz``
read with ``allow_pickle=False``. The artifact knows how to predict, explain and
describe itself, so the CLI and the web routes stay thin.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

import chargecast
from chargecast import schema
from chargecast.model import reference
from chargecast.model.intervals import ResidualDistribution
from chargecast.model.predictors import Predictor, from_spec
from chargecast.model.publish import Draft

Array = npt.NDArray[np.float64]
FORMAT = 2  # 2: the interval is a per-group residual quantile grid
MODEL_FILE, ARRAYS_FILE, METADATA_FILE = "model.json", "arrays.npz", "metadata.json"
SIGNATURE_FILE = METADATA_FILE + ".sig"  # optional; made and checked by chargecast.signing


class ArtifactError(Exception):
    """The artifact is missing, tampered with, or made for incompatible software."""


class Prediction(NamedTuple):
    """One forecast and its interval. Immutable; a named tuple because the one-record path
    builds one per request and a frozen dataclass costs twice as much to construct."""

    charges: float
    low: float
    high: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _semantic(fields: Any) -> Any:
    """What a model depends on in a schema: names, order, types, ranges and categories.
    Labels, help texts and examples may be reworded without retraining."""
    if not isinstance(fields, list):
        return fields
    keep = ("name", "kind", "type", "minimum", "maximum", "enum")
    return [{k: f.get(k) for k in keep} if isinstance(f, dict) else f for f in fields]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "chargecast": chargecast.__version__, "numpy": np.__version__}
    for name in ("scikit-learn",):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


class Artifact:
    """A loaded, verified model: predicts, explains and describes itself."""

    def __init__(
        self,
        metadata: dict[str, Any],
        predictor: Predictor,
        distribution: ResidualDistribution,
        path: Path | None = None,
    ) -> None:
        self.metadata = metadata
        self.predictor = predictor
        self.distribution = distribution
        self.path = path
        self.version: str = metadata["version"]
        self.level = distribution.level
        # The training data's distribution for drift; None in artifacts trained before it existed.
        self.reference = reference.parse(metadata["reference"]) if "reference" in metadata else None
        # Bound once: the one-record path calls these on every request.
        self._point_row = predictor.predict_row
        self._interval_row = distribution.apply_row
        ranges = metadata.get("training_ranges") or {}
        # (column, name, min, max) of every numeric input the training data bounds
        self._ranges = [
            (j, name, float(ranges[name]["min"]), float(ranges[name]["max"]))
            for j, name in enumerate(schema.FEATURES)
            if isinstance(ranges.get(name), dict) and {"min", "max"} <= set(ranges[name])
        ]

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str, sha256: str | None = None) -> Artifact:
        """Verify every listed file's hash, then the software versions, then parse.

        ``sha256`` pins the exact metadata.json (and through its hashes every file) that
        must be found: a worker loading the server's snapshot serves that version or none.
        """
        return load_verified(path, sha256)[0]

    @classmethod
    def from_contents(cls, root: Path, metadata: dict[str, Any], contents: Mapping[str, bytes]) -> Artifact:
        """Build from bytes already verified against ``metadata`` (see :func:`read_verified`)."""
        cls._check_compatible(metadata)
        try:
            spec = json.loads(contents[MODEL_FILE].decode("utf-8"))
            with np.load(io.BytesIO(contents[ARRAYS_FILE]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            predictor = from_spec(spec["predictor"], arrays)
            distribution = ResidualDistribution.from_json(spec["interval"])
            artifact = cls(metadata, predictor, distribution, root)
            artifact._self_check()
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
            raise ArtifactError(f"{MODEL_FILE}: cannot build the model ({exc})") from None
        return artifact

    def _self_check(self) -> None:
        """Predict one patient of every interval group, scalar and batch paths alike: a
        structurally broken model fails here, at load, not on some later request."""
        rows = np.array(
            [
                [25, 0, 25, 1, 0, 2],  # one patient of every interval group
                [40, 1, 31, 0, 0, 1],
                [55, 0, 22, 2, 0, 0],
                [40, 1, 25, 1, 1, 0],
                [40, 1, 35, 1, 1, 3],
            ],
            dtype=np.float64,
        )
        charges, low, high = self.predict(rows)
        self.explain(rows)
        for i, row in enumerate(rows.tolist()):
            one = self.predict_row(row)
            if not np.isfinite([one.charges, one.low, one.high]).all() or abs(one.charges - charges[i]) > 1e-6 * max(
                1.0, abs(charges[i])
            ):
                raise ValueError(f"self-check failed on {schema.decode(row)}")
        if not (np.isfinite(charges).all() and (low <= high).all()):
            raise ValueError("self-check produced non-finite forecasts or inverted intervals")

    @staticmethod
    def _check_compatible(metadata: Mapping[str, Any]) -> None:
        if metadata.get("format") != FORMAT:
            raise ArtifactError(
                f"artifact format {metadata.get('format')!r} is not supported (this chargecast reads format {FORMAT})"
            )
        libs = metadata.get("libraries", {})
        if _major(str(libs.get("numpy", "?"))) != _major(np.__version__):
            raise ArtifactError(
                f"artifact was written with numpy {libs.get('numpy')}, "
                f"incompatible with installed numpy {np.__version__}"
            )
        if _major(str(libs.get("chargecast", "?"))) != _major(chargecast.__version__):
            raise ArtifactError(
                f"artifact was written by chargecast {libs.get('chargecast')}, "
                f"incompatible with chargecast {chargecast.__version__}"
            )
        if _semantic(metadata.get("schema")) != _semantic(schema.describe()):
            raise ArtifactError("artifact was trained for a different patient record schema")

    # -- prediction ----------------------------------------------------------------------
    def predict_record(self, record: Mapping[str, Any]) -> Prediction:
        """Validate and predict one record (the hot path: no numpy arrays involved)."""
        row = schema.encode_record(record)
        return self.predict_row(row)

    def predict_row(self, row: Sequence[float]) -> Prediction:
        charges = self._point_row(row)
        low, high = self._interval_row(charges, row)
        return Prediction(charges, low, high)

    def quantiles_row(self, charges: float, row: Sequence[float], levels: Sequence[float]) -> list[float]:
        """Forecast quantiles of one encoded row at ``levels`` (each in (0, 1))."""
        return self.distribution.quantiles_row(charges, row, levels)

    def quantiles(self, charges: Array, X: Array, levels: Sequence[float]) -> Array:
        """(n, len(levels)) forecast quantiles; ``charges`` from :meth:`predict`."""
        return self.distribution.quantiles(charges, X, levels)

    def total(self, charges: Array, X: Array) -> Prediction:
        """The book's total: sum of forecasts and an interval for the sum of actual charges."""
        return Prediction(*self.distribution.total(charges, X))

    def predict(self, X: Array) -> tuple[Array, Array, Array]:
        """Point predictions and interval bounds for an encoded (n, 6) matrix."""
        charges = self.predictor.predict(X)
        low, high = self.distribution.apply(charges, X)
        return charges, low, high

    def extrapolated(self, row: Sequence[float]) -> list[str]:
        """Inputs of one encoded row outside the training data's range: the interval's
        coverage was only measured inside it, so callers should know."""
        return [name for j, name, lo, hi in self._ranges if not lo <= row[j] <= hi]

    def extrapolated_rows(self, X: Array) -> list[list[str]]:
        """:meth:`extrapolated` for every row of an encoded matrix, vectorised."""
        out: list[list[str]] = [[] for _ in range(len(X))]
        for j, name, lo, hi in self._ranges:
            for i in np.flatnonzero((X[:, j] < lo) | (X[:, j] > hi)).tolist():
                out[i].append(name)
        return out

    def explain(self, X: Array) -> Array:
        """Per-input contributions; each row sums to prediction minus :attr:`baseline`."""
        return self.predictor.contributions(X)

    @property
    def baseline(self) -> float:
        return self.predictor.baseline

    def describe(self) -> dict[str, Any]:
        """What clients may know: everything in metadata.json but file hashes and the drift
        reference (operators' business, and a few kilobytes every client would download)."""
        return {k: v for k, v in self.metadata.items() if k not in ("files", "reference")}


_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUMBER = (int, float)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _rule(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ArtifactError(f"{METADATA_FILE}: field '{name}' {rule}")


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Check metadata.json's fields for type and value before anything trusts them.

    A hand-edited or foreign file must fail here with the field and the rule named, not
    later as an ``AttributeError`` deep inside loading or serving.
    """
    _rule("(top level)", isinstance(metadata, dict), "must be a JSON object")
    m: dict[str, Any] = metadata
    for name in ("format", "version", "files", "libraries", "schema"):
        _rule(name, name in m, "is missing")
    _rule("format", isinstance(m["format"], int) and not isinstance(m["format"], bool), "must be an integer")
    if m["format"] != FORMAT:  # an older or newer layout: say so rather than name its first odd field
        raise ArtifactError(f"artifact format {m['format']!r} is not supported (this chargecast reads format {FORMAT})")
    _rule("version", isinstance(m["version"], str) and m["version"] != "", "must be a string")
    files = m["files"]
    _rule(
        "files",
        isinstance(files, dict) and all(isinstance(k, str) and k for k in files),
        "must map paths to sha256 strings",
    )
    for rel, digest in files.items():
        _rule(
            f"files.{rel}", isinstance(digest, str) and _SHA256.fullmatch(digest) is not None, "must be 64 hex digits"
        )
    libs = m["libraries"]
    _rule("libraries", isinstance(libs, dict), "must be an object of library name to version string")
    for lib, version in libs.items():
        _rule(f"libraries.{lib}", isinstance(version, str), "must be a version string")
    _rule(
        "schema",
        isinstance(m["schema"], list) and all(isinstance(f, dict) for f in m["schema"]),
        "must be a list of objects",
    )
    if "interval_level" in m:
        level = m["interval_level"]
        _rule("interval_level", _is_number(level) and 0 < level < 1, "must be a number between 0 and 1 (exclusive)")
    for name, kind, label in (
        ("created_at", str, "a string"),
        ("predictor", str, "a string"),
        ("model", str, "a string"),
        ("leaderboard", list, "a list"),
        ("training_ranges", dict, "an object"),
        ("baseline", _NUMBER, "a number"),
        ("metrics", dict, "an object"),
    ):
        if name in m:
            _rule(name, isinstance(m[name], kind) and not isinstance(m[name], bool), f"must be {label}")
    for name, spec in m.get("training_ranges", {}).items():
        _check_range(f"training_ranges.{name}", spec)
    if "reference" in m:  # optional: artifacts trained before drift monitoring have none
        try:
            reference.parse(m["reference"])
        except ValueError as exc:
            raise ArtifactError(f"{METADATA_FILE}: {exc}") from None
    return m


def _check_range(name: str, spec: Any) -> None:
    """A numeric input's ``{"min", "max"}`` (min <= max) or a category's counts."""
    _rule(name, isinstance(spec, dict), "must be an object")
    if "min" in spec or "max" in spec:
        for end in ("min", "max"):
            _rule(f"{name}.{end}", _is_number(spec.get(end)), "must be a number")
        _rule(name, spec["min"] <= spec["max"], "must have min <= max")
        return
    for category, count in spec.items():
        ok = isinstance(count, int) and not isinstance(count, bool) and count >= 0
        _rule(f"{name}.{category}", ok, "must be a count (a whole number >= 0)")


def read_verified(path: Path | str, sha256: str | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read metadata.json and every file it lists, checked against their hashes.

    Returns the metadata and the verified bytes of every file, metadata.json included, so
    a caller can build the model from them or copy them without reading the disk again.
    """
    given = Path(path)
    # Resolved once: every file comes from the one version ``models/current`` links to now,
    # however often a writer swaps the link meanwhile.
    root = given.resolve()
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{given / METADATA_FILE}: not found (is {given} a chargecast model directory?)")
    raw = meta_path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ArtifactError(f"{METADATA_FILE}: sha256 is not the one verified at start-up (files changed)")
    try:
        loaded = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{meta_path}: unreadable metadata ({exc})") from None
    metadata = check_metadata(loaded)
    files: dict[str, str] = metadata["files"]
    for rel in (MODEL_FILE, ARRAYS_FILE):
        if rel not in files:
            raise ArtifactError(f"{meta_path}: 'files' does not list {rel}")
    contents: dict[str, bytes] = {METADATA_FILE: raw}
    for rel, expected in files.items():
        file = (root / rel).resolve()
        if root not in file.parents:
            raise ArtifactError(f"{rel}: path escapes the artifact directory")
        if not file.is_file():
            raise ArtifactError(f"{rel}: listed in metadata.json but missing")
        # Hash the very bytes that are parsed later: no window to swap the file between.
        contents[rel] = file.read_bytes()
        if hashlib.sha256(contents[rel]).hexdigest() != expected:
            raise ArtifactError(f"{rel}: sha256 does not match metadata.json (file changed or corrupt)")
    return metadata, contents


def load_verified(path: Path | str, sha256: str | None = None) -> tuple[Artifact, dict[str, bytes]]:
    """:meth:`Artifact.load`, also returning the verified bytes it was built from."""
    metadata, contents = read_verified(path, sha256)
    return Artifact.from_contents(Path(path), metadata, contents), contents


def snapshot(contents: Mapping[str, bytes], dest: Path) -> str:
    """Write verified bytes into ``dest`` (a fresh private directory); return metadata.json's sha256.

    The server serves from such a copy, so a later change to the original files, good or
    broken, never reaches a worker that restarts; the digest lets that worker prove it.
    """
    for rel, data in contents.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return hashlib.sha256(contents[METADATA_FILE]).hexdigest()


def write(
    out_dir: Path,
    predictor: Predictor,
    distribution: ResidualDistribution,
    metadata: dict[str, Any],
    extra_files: Callable[[dict[str, Any]], Mapping[str, bytes]] | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> dict[str, Any]:
    """Publish a new version at ``out_dir``: a reader finds the old model or the new one, never
    neither, even when the writer is killed half-way (see :mod:`chargecast.model.publish`).

    ``metadata`` gets ``format``, ``version``, ``created_at``, ``libraries``, ``schema``
    and ``files`` added. ``extra_files`` (report, model card) is called with that final
    metadata, so what it renders names the real version. ``sign`` turns metadata.json's bytes
    into ``metadata.json.sig``, published in the same swap: no reader ever sees the new metadata
    unsigned. Returns the final metadata.
    Every byte is made before the disk is touched, so a failure there leaves no trace.
    """
    spec = {"predictor": predictor.to_json(), "interval": distribution.to_json()}
    arrays = io.BytesIO()
    np.savez(arrays, **(predictor.arrays() or {"empty": np.zeros(0)}))  # type: ignore[arg-type]
    files = {MODEL_FILE: json.dumps(spec, indent=1).encode("utf-8"), ARRAYS_FILE: arrays.getvalue()}
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    created = datetime.now(UTC)
    digest = hashlib.sha256("".join(hashes[k] for k in sorted(hashes)).encode()).hexdigest()
    full = {
        "format": FORMAT,
        "version": f"{created:%Y%m%d}-{digest[:8]}",
        "created_at": created.isoformat(timespec="seconds"),
        "libraries": library_versions(),
        "schema": schema.describe(),
        **metadata,
        "files": hashes,
    }
    files.update(extra_files(full) if extra_files else {})
    files[METADATA_FILE] = (json.dumps(full, indent=2) + "\n").encode("utf-8")
    if sign is not None:
        files[SIGNATURE_FILE] = sign(files[METADATA_FILE])
    with Draft(Path(out_dir)) as draft:
        for rel, data in files.items():
            draft.put(rel, data)
        draft.publish(full["version"])
    return full
