"""The audit store's contract, held to the same tests on SQLite, a real PostgreSQL and files."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chargecast.audit.store import (
    ACTUALS,
    FORECASTS,
    Actual,
    AuditUrlError,
    FileStore,
    Forecast,
    PostgresStore,
    Store,
    as_row,
    json_row,
    open_store,
    parse_url,
    row_json,
    stamp,
    timestamp,
    to_json,
)
from chargecast.schema import FIELDS

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
INPUTS: dict[str, float | str] = {
    "age": 39.0,
    "sex": "female",
    "bmi": 30.4,
    "children": 1.0,
    "smoker": "no",
    "region": "southeast",
}


def forecast(request_id: str = "r1", row: int = 0, seconds: float = 0, patient: str | None = None) -> Forecast:
    return Forecast(
        request_id=request_id,
        row=row,
        time=T0 + timedelta(seconds=seconds),
        model_version="2025.03.01-abc",
        model_digest=hashlib.sha256(b"metadata").hexdigest(),
        route="/api/v1/predict",
        caller="team-a",
        patient=patient,
        inputs=dict(INPUTS),
        charges=12345.678901234,
        low=2345.5,
        high=45678.25,
        level=0.9,
        quantiles={"0.05": 2345.5, "0.5": 9876.125},
        extrapolated=("age", "bmi") if row % 2 else (),
        client_request_id="client-7" if row == 0 else None,
    )


@pytest.fixture(params=["sqlite", "postgresql", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/audit.sqlite3"
    elif request.param == "file":
        url = f"file:///{tmp_path}/audit"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_store(url)
    opened.migrate()
    yield opened
    opened.close()


def test_a_forecast_reads_back_exactly(store: Store) -> None:
    written = [forecast(row=0), forecast(row=1)]
    assert store.write(written) == 2
    assert list(store.forecasts()) == written  # floats, quantiles, flags and times round-trip


def test_a_duplicate_delivery_is_absorbed(store: Store) -> None:
    batch = [forecast("a", 0), forecast("a", 1), forecast("b", 0, 1)]
    assert store.write(batch) == 3
    assert store.write(batch) == 0  # the same batch again
    assert store.write([forecast("a", 1), forecast("c", 0, 2), forecast("c", 0, 2)]) == 1  # mixed, and twice in one
    assert [(f.request_id, f.row) for f in store.forecasts()] == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]


def test_rows_are_the_write_path_of_the_same_records(store: Store) -> None:
    written = [forecast("a", 0), forecast("a", 1), forecast("b", 0, 1, "p1")]
    rows = [as_row(f) for f in written]
    assert store.write_rows(rows[:2]) == 2  # PostgreSQL: COPY straight into the table
    assert store.write_rows(rows) == 1  # one was there: absorbed (PostgreSQL: through the staging table)
    assert list(store.forecasts()) == written
    assert [row_json(r) for r in rows] == [to_json(f) for f in written]  # the same JSON Lines record
    assert [json_row(row_json(r)) for r in rows] == rows


def test_stamp_is_timestamp_of_the_same_moment() -> None:
    moments = [0.0, 1.5, 1740830400.123456, time.time(), *(random.Random(7).uniform(0, 4e9) for _ in range(2000))]
    assert [stamp(t) for t in moments] == [timestamp(datetime.fromtimestamp(t, UTC)) for t in moments]


def test_forecasts_are_ordered_and_ranged(store: Store) -> None:
    store.write([forecast("z", 0, 5), forecast("b", 1, 1), forecast("b", 0, 1), forecast("a", 0, 9)])
    assert [(f.request_id, f.row) for f in store.forecasts()] == [("b", 0), ("b", 1), ("z", 0), ("a", 0)]
    since, until = T0 + timedelta(seconds=1), T0 + timedelta(seconds=9)
    assert [f.request_id for f in store.forecasts(since, until)] == ["b", "b", "z"]  # since in, until out


def test_actuals_are_idempotent_and_the_first_value_wins(store: Store) -> None:
    store.write([forecast("a", 0), forecast("a", 1, 1)])
    received = T0 + timedelta(days=30)
    assert store.add_actuals([Actual("a", 0, 1000.0, received), Actual("ghost", 3, 5.0, received)]) == (2, 0)
    assert store.add_actuals([Actual("a", 0, 2000.0, received), Actual("a", 1, 3000.0, received)]) == (1, 1)
    assert [(f.request_id, f.row, c) for f, c in store.realised()] == [("a", 0, 1000.0), ("a", 1, 3000.0)]
    assert [c for _, c in store.realised(since=T0 + timedelta(seconds=1))] == [3000.0]


def test_resolve_finds_the_latest_forecast_of_a_patient(store: Store) -> None:
    store.write([forecast("a", 0, 0, "p1"), forecast("b", 2, 5, "p1"), forecast("c", 0, 9, "p2")])
    assert store.resolve("p1") == ("b", 2)
    assert store.resolve("nobody") is None


def test_prune_deletes_old_forecasts_and_their_actuals(store: Store) -> None:
    store.write([forecast("old", 0, 0), forecast("new", 0, 100)])
    store.add_actuals([Actual("old", 0, 1.0, T0 + timedelta(days=1)), Actual("new", 0, 2.0, T0 + timedelta(days=1))])
    assert store.prune(T0 + timedelta(seconds=50)) == 1
    assert [f.request_id for f in store.forecasts()] == ["new"]
    assert [(f.request_id, c) for f, c in store.realised()] == [("new", 2.0)]
    assert store.add_actuals([Actual("old", 0, 9.0, T0)]) == (1, 0)  # its actual went with it


def test_migrate_is_idempotent(store: Store) -> None:
    store.write([forecast()])
    store.migrate()
    store.migrate()
    assert len(list(store.forecasts())) == 1


def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.write([replace(forecast(), time=datetime(2025, 1, 1))])


def test_the_sqlite_table_is_the_documented_one(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    store.write([forecast()])
    store.close()
    db = sqlite3.connect(path)
    columns = {name: kind for _, name, kind, *_ in db.execute(f"PRAGMA table_info({FORECASTS})")}
    for spec in FIELDS:  # the input columns come from the schema
        expected = "TEXT" if spec.kind == "category" else ("INTEGER" if getattr(spec, "integer", False) else "REAL")
        assert columns[spec.name] == expected
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute(f"SELECT age, sex, extrapolated, quantiles FROM {FORECASTS}").fetchone() == (
        39,
        "female",
        "",
        '{"0.05":2345.5,"0.5":9876.125}',
    )
    keys = [name for _, name, _, _, _, pk in db.execute(f"PRAGMA table_info({ACTUALS})") if pk]
    assert keys == ["request_id", "row"]
    assert db.execute("SELECT version FROM chargecast_audit_schema").fetchall() == [(1,)]


def test_the_postgresql_table_is_the_documented_one(postgres_url: str) -> None:
    import psycopg

    store = open_store(postgres_url)
    store.migrate()
    store.migrate()
    with psycopg.connect(postgres_url) as db:
        rows = db.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (FORECASTS,)
        ).fetchall()
        kinds: dict[str, str] = dict(rows)
        assert (kinds["age"], kinds["bmi"], kinds["sex"]) == ("integer", "double precision", "text")
        assert kinds["time"] == "timestamp with time zone"
        assert db.execute("SELECT version FROM chargecast_audit_schema").fetchall() == [(1,)]
    store.close()


def test_postgresql_reconnects_after_the_server_restarts(postgres: object, postgres_url: str) -> None:
    from postgres import Postgres

    assert isinstance(postgres, Postgres)
    store = open_store(postgres_url)
    store.migrate()
    assert store.write([forecast("a")]) == 1
    postgres.stop("immediate")
    with pytest.raises(Exception, match=r"(?i)connect|terminat|closed|server"):
        store.write([forecast("b")])
    postgres.start()
    assert store.write([forecast("b"), forecast("a")]) == 1
    assert [f.request_id for f in store.forecasts()] == ["a", "b"]
    store.close()


def test_a_paced_postgresql_write_is_one_transaction_in_pieces(postgres_url: str) -> None:
    """The audit process COPYs in pieces with pauses between (PostgresStore.pace): another
    connection sees none of a batch until all of it is in, and a redelivery still adds none."""
    import threading

    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    store.migrate()
    store.pace = (100, 0.3)
    batch = [forecast(f"paced-{i:04d}", 0, i) for i in range(250)]  # three pieces, two pauses
    done: list[int] = []
    writing = threading.Thread(target=lambda: done.append(store.write(batch)))
    writing.start()
    try:
        time.sleep(0.4)  # within the pauses: the first piece (at least) is COPYed, not committed
        reader = open_store(postgres_url)
        try:
            seen = sum(1 for f in reader.forecasts() if f.request_id.startswith("paced-"))
        finally:
            reader.close()
    finally:
        writing.join()
    assert seen == 0
    assert done == [250]
    assert store.write(batch) == 0  # the whole batch again: absorbed, no error
    assert sum(1 for f in store.forecasts() if f.request_id.startswith("paced-")) == 250
    store.close()


def test_the_file_store_dedupes_across_processes_when_read(tmp_path: Path) -> None:
    one, two = FileStore(tmp_path), FileStore(tmp_path)  # two processes' stores: neither sees the other's keys
    one.migrate()
    assert one.write([forecast("a"), forecast("b")]) == 2
    assert two.write([forecast("a"), forecast("c")]) == 2  # appended again: a crash fell between write and checkpoint
    assert [f.request_id for f in one.forecasts()] == ["a", "b", "c"]
    one.close()
    two.close()


def test_the_file_store_rotates_by_size_and_fsyncs_whole_lines(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_bytes=1)
    store.write([forecast("a")])
    store.write([forecast("b")])
    files = sorted(tmp_path.glob("forecasts-*.jsonl"))
    assert len(files) == 2
    with files[1].open("ab") as torn:
        torn.write(b'{"request_id": "half')  # a crash mid-line: readers skip it
    assert [f.request_id for f in store.forecasts()] == ["a", "b"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "must be off, sqlite:///path"),
        ("sqlite://relative.db", "three slashes"),
        ("sqlite:///", "three slashes"),
        ("postgresql:///db", "names no host"),
        ("file:/tmp/x", "must be off"),
    ],
)
def test_bad_urls_get_one_clear_line(url: str, message: str) -> None:
    with pytest.raises(AuditUrlError, match=message) as caught:
        open_store(url)
    assert "\n" not in str(caught.value)


def test_a_password_never_appears_in_an_error() -> None:
    with pytest.raises(AuditUrlError) as caught:
        parse_url("postgresql://user:s3cret@/db")
    assert "s3cret" not in str(caught.value)


def test_urls_parse_to_paths() -> None:
    assert parse_url("sqlite:///var/audit.sqlite3") == ("sqlite", "var/audit.sqlite3")
    assert parse_url("sqlite:////abs/a.sqlite3") == ("sqlite", "/abs/a.sqlite3")
    assert parse_url("file:///spool/dir") == ("file", "spool/dir")
    assert parse_url(" OFF ") == ("off", "")
    assert parse_url("postgresql://u:p@h:5432/d")[0] == "postgresql"


def test_newest_reads_only_the_last_records_of_the_range_still_in_time_order(store: Store) -> None:
    """The service's gauges read the newest N of a day's records every minute: a store must not
    hand over the whole day for the caller to throw most of it away."""
    store.write([forecast(f"r{i:02d}", i % 2, i) for i in range(20)])
    every = [(f.request_id, f.row) for f in store.forecasts()]
    assert [(f.request_id, f.row) for f in store.forecasts(newest=5)] == every[-5:]
    since = T0 + timedelta(seconds=3)
    assert [f.request_id for f in store.forecasts(since, T0 + timedelta(seconds=10), newest=4)] == [
        "r06", "r07", "r08", "r09"
    ]  # fmt: skip
    assert list(store.forecasts(newest=100)) == list(store.forecasts())
    received = T0 + timedelta(days=1)
    store.add_actuals([Actual(f"r{i:02d}", i % 2, float(i), received) for i in range(0, 20, 3)])
    paid = [(f.request_id, c) for f, c in store.realised()]
    assert [(f.request_id, c) for f, c in store.realised(newest=2)] == paid[-2:] == [("r15", 15.0), ("r18", 18.0)]
    assert [c for _, c in store.realised(since=since, newest=10)] == [3.0, 6.0, 9.0, 12.0, 15.0, 18.0]
