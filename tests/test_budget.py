"""The memory budget: its bookkeeping, and each cost estimate against the peak it must cover.

The estimates are what a request pays *before* the work, so an estimate below the real peak
would let the budget be exceeded: each is checked against tracemalloc's peak for the worst
shapes of input (compact records, long strings with one non-Latin-1 character, quoting).
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from chargecast.model.artifact import Artifact
from chargecast.serving import csvroute, errors, formdata, jsonbody, predict, request
from chargecast.serving.budget import Lease, MemoryBudget, answer_cost, csv_cost, form_cost, json_cost

RECORD = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
EMOJI = "\U0001f600"


def peak_of(work: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of ``work`` beyond what was allocated before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = work()
        peak = tracemalloc.get_traced_memory()[1] - before
        del result
    finally:
        tracemalloc.stop()
    return peak


# -- bookkeeping ------------------------------------------------------------------------
def test_a_lease_takes_what_fits_and_refuses_the_rest_with_a_503() -> None:
    budget = MemoryBudget(1000)
    lease = Lease(budget)
    lease.take(600)
    with pytest.raises(errors.ApiError) as refused:
        Lease(budget).take(401, "CSV file")
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"]
    assert "CSV file" in refused.value.message
    assert budget.used == 600  # the refused take kept nothing
    lease.take(400)
    assert budget.free == 0
    lease.release()
    lease.release()  # idempotent
    assert budget.used == 0


def test_fits_refuses_without_taking() -> None:
    budget = MemoryBudget(1000)
    Lease(budget).fits(1000)
    with pytest.raises(errors.ApiError):
        Lease(budget).fits(1001)
    assert budget.used == 0


def test_the_budget_adds_up_across_threads() -> None:
    budget = MemoryBudget(10**12)

    def churn() -> None:
        for _ in range(20_000):
            lease = Lease(budget)
            lease.take(7)
            lease.take(11)
            lease.release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.used == 0


# -- JSON -------------------------------------------------------------------------------
JSON_BODIES = {
    "10,000 compact records": orjson.dumps([RECORD] * 10_000),
    "one long ASCII string and one emoji": orjson.dumps({"x": "a" * 900_000 + EMOJI}),
    "many small numbers": b"[" + b",".join([b"1"] * 450_000) + b"]",
    "many short strings": orjson.dumps(["ab"] * 150_000),
    "objects with many keys": orjson.dumps([{f"k{i}": i for i in range(50)}] * 800),
    "empty objects": b"[" + b",".join([b"{}"] * 300_000) + b"]",
    "empty arrays": b"[" + b",".join([b"[]"] * 300_000) + b"]",
    "floats": b"[" + b",".join([b"1.5"] * 250_000) + b"]",
    "deepest nesting": b"[" * 1023 + b"]" * 1023,
    "large integers": b"[" + b",".join([b"12345678901234"] * 60_000) + b"]",
}


@pytest.mark.parametrize("body", JSON_BODIES.values(), ids=JSON_BODIES.keys())
def test_parsing_json_stays_within_its_estimate(body: bytes) -> None:
    assert len(body) <= 1 << 20
    peak = peak_of(lambda: _parsed(body))
    assert peak <= json_cost(body), f"peak {peak:,} > estimate {json_cost(body):,}"


def _parsed(body: bytes) -> Any:
    try:
        return jsonbody.parse_json(body)
    except errors.ApiError as exc:
        return exc


NINETY_NINE = ",".join(f"0.{i:02d}" for i in range(1, 100))


@pytest.mark.parametrize(
    ("rows", "explain", "levels"),
    [(10_000, False, ""), (10_000, True, ""), (10_000, False, "0.05,0.5,0.95"), (1_010, True, NINETY_NINE)],
    ids=["plain", "explain", "3 quantiles", "99 quantiles"],
)
def test_answering_a_list_stays_within_its_estimate(model: Artifact, rows: int, explain: bool, levels: str) -> None:
    body = orjson.dumps([RECORD] * rows)
    parsed = request.parse_levels(levels) if levels else None
    n_levels = len(parsed.values) if parsed else 0
    if rows * n_levels > predict.MAX_QUANTILE_CELLS:
        rows = predict.MAX_QUANTILE_CELLS // n_levels
        body = orjson.dumps([RECORD] * rows)
    peak = peak_of(lambda: predict.predict_payload(model, jsonbody.parse_json(body), explain, parsed))
    estimate = json_cost(body) + answer_cost(rows, explain, n_levels)
    assert peak <= estimate, f"peak {peak:,} > estimate {estimate:,}"


def test_a_list_with_too_many_quantiles_is_a_422_naming_them(model: Artifact) -> None:
    levels = request.parse_levels(NINETY_NINE)
    with pytest.raises(errors.ApiError) as refused:
        predict.predict_payload(model, [RECORD] * 1_011, False, levels)
    assert refused.value.status == 422
    assert refused.value.issues[0].field == "quantiles"
    assert "100,000" in refused.value.issues[0].rule


def test_parsing_a_form_stays_within_its_estimate() -> None:
    body = b"age=" + b"1" * 900_000 + "&sex=é".encode() + b"&bmi=3&x=" + b"y" * 100_000
    peak = peak_of(lambda: formdata.form_values(body, "application/x-www-form-urlencoded"))
    assert peak <= form_cost(body)


# -- CSV --------------------------------------------------------------------------------
HEADER = b"age,sex,bmi,children,smoker,region,note\n"


def _csv(rows: int, note: bytes, quoted: bool = False) -> bytearray:
    row = b"39,female,30.4,1,no,southeast," + (b'"' + note + b'"' if quoted else note) + b"\n"
    return bytearray(HEADER + row * rows)


CSV_BODIES = {
    "short rows": lambda: _csv(120_000, b"x"),
    "ASCII notes": lambda: _csv(100_000, b"x" * 40),
    "emoji notes": lambda: _csv(100_000, EMOJI.encode() * 10),
    "one emoji among ASCII": lambda: _csv(100_000, b"x" * 40)[:-6] + EMOJI.encode() + b"\n",
    "quoted notes": lambda: _csv(100_000, b"a,b" * 12, quoted=True),
    "quoted emoji notes": lambda: _csv(100_000, ("a" + EMOJI).encode() * 6, quoted=True),
}


@pytest.mark.parametrize("make", CSV_BODIES.values(), ids=CSV_BODIES.keys())
def test_scoring_and_streaming_a_csv_stays_within_its_estimate(model: Artifact, make: Callable[[], bytearray]) -> None:
    body = make()
    source = csvroute.csv_source(body, "text/csv")

    def score_and_stream() -> int:
        scored = csvroute.score_csv(model, source, 250_000)
        return sum(len(chunk) for chunk in csvroute.csv_chunks(scored))

    out = 0

    def run() -> None:
        nonlocal out
        out = score_and_stream()

    peak = peak_of(run)
    assert out > len(body)  # it really scored and wrote every row
    estimate = csv_cost(source.rows_bound())
    assert peak <= estimate, f"peak {peak:,} > estimate {estimate:,}"
