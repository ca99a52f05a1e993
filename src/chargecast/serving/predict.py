"""What each route forecasts: one record, a list of them, the tutorial's bare number, the form's answer.

Works on parsed bodies and the model, never on the transport; every refusal is an
:class:`~chargecast.serving.errors.ApiError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from chargecast.model.artifact import Artifact
from chargecast.model.totals import total_json
from chargecast.schema import FEATURES, FIELDS, MAX_REPORTED_ISSUES, Issue
from chargecast.serving.errors import invalid
from chargecast.serving.jsonbody import check_json_record
from chargecast.serving.request import Levels, parse_levels

Array = npt.NDArray[np.float64]
MAX_RECORDS: Final = 10_000


EXAMPLE_RECORD: Final[dict[str, Any]] = {f.name: f.example for f in FIELDS}


# A list's quantiles cost memory per record and level (~85 B each once serialised): 10,000
# records at 99 levels took ~100 MB to answer a 1 MB body. More than this is a 422.
MAX_QUANTILE_CELLS: Final = 100_000


@dataclass(frozen=True, slots=True)
class Scored:
    """A prediction response's body, plus what the metrics need to see (no patient data leaves)."""

    body: bytes
    rows: Sequence[float] | Array  # one encoded row, or an (n, 6) matrix
    charges: float | Array
    count: int


def _contributions(model: Artifact, X: Array) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row, strict=True)) for row in model.explain(X).tolist()]


def predict_one(model: Artifact, obj: Any, explain: bool = False, levels: Levels | None = None) -> Scored:
    """One record: the scalar hot path (no numpy unless an explanation is asked for)."""
    row, issues = check_json_record(obj)
    if issues:
        raise invalid(issues, what="record")
    p = model.predict_row(row)
    out: dict[str, Any] = {
        "charges": p.charges,
        "interval": {"low": p.low, "high": p.high, "level": model.level},
        "model_version": model.version,
    }
    if levels is not None:
        out["quantiles"] = dict(zip(levels.keys, model.quantiles_row(p.charges, row, levels.values), strict=True))
    if explain:
        out["contributions"] = _contributions(model, np.array([row], dtype=np.float64))[0]
        out["baseline"] = model.baseline
    if outside := model.extrapolated(row):
        out["extrapolated"] = outside
    return Scored(orjson.dumps(out), row, p.charges, 1)


def check_quantile_cells(rows: int, levels: Levels | None) -> None:
    """Refuse (422) a list whose quantiles would be too many to answer."""
    if levels is not None and rows * len(levels.values) > MAX_QUANTILE_CELLS:
        asked = f"{rows:,} records x {len(levels.values)} levels"
        rule = f"times the number of records must be at most {MAX_QUANTILE_CELLS:,} (got {asked})"
        raise invalid([Issue("quantiles", f"{rule}: ask fewer levels or send fewer records")], what="batch")


def predict_many(model: Artifact, items: list[Any], explain: bool = False, levels: Levels | None = None) -> Scored:
    """A list of 1 to 10,000 records, validated one by one (errors name ``[i].field``), and
    their total: the book's charges with an interval for what it will actually cost."""
    if not items:
        raise invalid([Issue("body", f"must hold 1 to {MAX_RECORDS} records, got 0")], what="batch")
    if len(items) > MAX_RECORDS:
        raise invalid(
            [Issue("body", f"must hold at most {MAX_RECORDS} records (send bigger batches to /api/v1/predict/csv)")],
            what="batch",
        )
    check_quantile_cells(len(items), levels)
    rows: list[list[float]] = []
    issues: list[Issue] = []
    total = 0
    for i, obj in enumerate(items):
        encoded, found = check_json_record(obj, f"[{i}].")
        if found:
            total += len(found)
            issues.extend(found[: max(0, MAX_REPORTED_ISSUES - len(issues))])
        elif not total:
            rows.append(encoded)
    if total:
        raise invalid(issues, total, what="records")
    X = np.array(rows, dtype=np.float64)
    charges, low, high = model.predict(X)
    level = model.level
    predictions: list[dict[str, Any]] = [
        {"charges": c, "interval": {"low": lo, "high": hi, "level": level}}
        for c, lo, hi in zip(charges.tolist(), low.tolist(), high.tolist(), strict=True)
    ]
    if explain:
        baseline = model.baseline
        for item, contribution in zip(predictions, _contributions(model, X), strict=True):
            item["contributions"] = contribution
            item["baseline"] = baseline
    if levels is not None:
        keys = levels.keys
        for item, values in zip(predictions, model.quantiles(charges, X, levels.values).tolist(), strict=True):
            item["quantiles"] = dict(zip(keys, values, strict=True))
    for item, outside in zip(predictions, model.extrapolated_rows(X), strict=True):
        if outside:
            item["extrapolated"] = outside
    book = total_json(model.total(charges, X), level)
    body = orjson.dumps({"predictions": predictions, "total": book, "model_version": model.version})
    return Scored(body, X, charges, len(rows))


def predict_payload(model: Artifact, payload: Any, explain: bool = False, levels: Levels | None = None) -> Scored:
    """Dispatch a parsed body: an object is one record, an array a batch, anything else a 422."""
    if type(payload) is dict:
        return predict_one(model, payload, explain, levels)
    if type(payload) is list:
        return predict_many(model, payload, explain, levels)
    raise invalid(
        [Issue("body", f"must be a JSON object (one record) or an array of 1 to {MAX_RECORDS} records", payload)],
        what="body",
    )


def predict_bare(model: Artifact, payload: Any) -> Scored:
    """The tutorial's ``/predict_api``: one JSON object in, a bare number out."""
    if type(payload) is not dict:
        raise invalid([Issue("body", "must be a JSON object with the six fields", payload)], what="body")
    row, issues = check_json_record(payload)
    if issues:
        raise invalid(issues, what="record")
    p = model.predict_row(row)
    return Scored(orjson.dumps(p.charges), row, p.charges, 1)


def model_info(model: Artifact) -> bytes:
    """``GET /api/v1/model``: the artifact's metadata without file hashes."""
    info = model.describe()
    info["version"] = model.version
    info["interval_level"] = model.level
    return orjson.dumps(info, option=orjson.OPT_SERIALIZE_NUMPY)


def warm_up(model: Artifact) -> None:
    """Exercise every prediction path once so the first real request is not the slow one."""
    levels = parse_levels("0.05,0.5,0.95")
    one = predict_one(model, dict(EXAMPLE_RECORD), explain=True, levels=levels)
    many = predict_many(model, [dict(EXAMPLE_RECORD)] * 2, explain=True, levels=levels)
    for body in (one.body, many.body):
        if b"NaN" in body or b"null" in body:
            raise ValueError("warm-up prediction is not a finite number")


@dataclass(frozen=True)
class FormResult:
    """A prediction as the form's page shows it; contributions sum to ``charges - baseline``.

    ``charges`` is the conditional mean (what to budget); ``median`` is the 0.5 quantile of
    the same distribution that gives ``low``/``high``, so the page can say where half of
    such patients fall without calling the mean typical.
    """

    charges: float
    low: float
    high: float
    median: float
    level: float
    contributions: dict[str, float]
    baseline: float


def form_result(model: Artifact, encoded: Sequence[float]) -> FormResult:
    """The form's answer: the mean forecast, its interval, and the median of the same
    distribution, so the page can say where half of such patients fall."""
    p = model.predict_row(encoded)
    (median,) = model.quantiles_row(p.charges, encoded, [0.5])
    contributions = _contributions(model, np.array([encoded], dtype=np.float64))[0]
    return FormResult(p.charges, p.low, p.high, median, model.level, contributions, model.baseline)
