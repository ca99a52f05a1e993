"""Batch scoring of files: exact predictions, untouched columns, all-or-nothing output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chargecast.batch import OUTPUT_COLUMNS, BatchError, score_file
from chargecast.model.artifact import Artifact
from chargecast.model.intervals import MONTE_CARLO_BOOK
from chargecast.model.totals import TOTAL_BLOCK, BookTotal
from chargecast.schema import FEATURES, FIELDS, CategoryField, ValidationError, encode_columns

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_path(model_dir: Path) -> Path:
    return model_dir


@pytest.fixture(scope="session")
def scorer(model: Artifact) -> Artifact:
    return model


def records(n: int, seed: int = 0) -> pd.DataFrame:
    """Valid patients over the schema's accepted ranges, as a file would hold them."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for spec in FIELDS:
        if isinstance(spec, CategoryField):
            data[spec.name] = np.asarray(spec.choices)[rng.integers(0, len(spec.choices), n)]
        elif spec.integer:
            data[spec.name] = rng.integers(int(spec.minimum), int(spec.maximum) + 1, n)
        else:
            data[spec.name] = np.round(rng.uniform(spec.minimum, spec.maximum, n), 2)
    return pd.DataFrame(data)


def with_extras(df: pd.DataFrame) -> pd.DataFrame:
    """Add columns the scorer must carry through untouched, awkward values included."""
    out = df.copy()
    out.insert(0, "patient_id", [f"P{i:06d}" for i in range(len(df))])
    notes = np.array(["", "plain", 'says "hi", twice', "ünïcode", " padded "], dtype=object)
    out["note"] = notes[np.arange(len(df)) % len(notes)]
    return out


def as_text(path: Path) -> pd.DataFrame:
    """Every cell of a CSV exactly as written, as a string."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def expected(scorer: Artifact, df: pd.DataFrame) -> tuple[npt.NDArray[np.float64], ...]:
    return scorer.predict(encode_columns({c: df[c].to_numpy() for c in FEATURES}))


def assert_scores(scorer: Artifact, inputs: pd.DataFrame, out: pd.DataFrame) -> None:
    """Parquet carries the forecasts as float64; a CSV writes them in cents, as the API does."""
    for name, want in zip(OUTPUT_COLUMNS, expected(scorer, inputs), strict=True):
        if pd.api.types.is_string_dtype(out[name]):
            assert out[name].tolist() == [f"{v:.2f}" for v in want]
        else:
            np.testing.assert_allclose(out[name].to_numpy(), want, rtol=0, atol=1e-9)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


# -- round trips ---------------------------------------------------------------------------


def test_csv_to_csv_keeps_every_column_and_cell(scorer: Artifact, insurance_csv: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = with_extras(pd.read_csv(insurance_csv, dtype=str, keep_default_na=False).drop(columns="charges"))
    data.to_csv(src, index=False)
    dest = tmp_path / "out.csv"
    assert score_file(src, dest, scorer) == len(data)
    out = as_text(dest)
    assert list(out.columns) == [*data.columns, *OUTPUT_COLUMNS]
    pd.testing.assert_frame_equal(out[list(data.columns)], data)  # same strings, same order
    assert_scores(scorer, data, out)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("column", OUTPUT_COLUMNS)
def test_an_input_that_already_holds_an_output_column_is_refused(scorer: Artifact, tmp_path: Path, column: str) -> None:
    """Scoring the training file would silently replace its real charges: refused, as the API does."""
    src, dest = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(f"age,sex,bmi,children,smoker,region,{column.upper()}\n39,male,30,1,no,southeast,1\n")
    with pytest.raises(ValidationError) as caught:
        score_file(src, dest, scorer)
    assert [(i.field, i.line) for i in caught.value.issues] == [(column, 1)]
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_csv_to_parquet(scorer: Artifact, tmp_path: Path) -> None:
    src, dest = tmp_path / "in.csv", tmp_path / "out.parquet"
    data = with_extras(records(500).astype(str))
    data.to_csv(src, index=False)
    assert score_file(src, dest, scorer) == 500
    table = pq.read_table(dest)
    assert table.column_names == [*data.columns, *OUTPUT_COLUMNS]
    for name in OUTPUT_COLUMNS:
        assert table.schema.field(name).type == pa.float64()
    out = table.to_pandas()
    pd.testing.assert_frame_equal(out[list(data.columns)], data)  # text in, text out
    assert_scores(scorer, data, out)


def test_parquet_to_csv_and_parquet_keeps_types(scorer: Artifact, tmp_path: Path) -> None:
    data = with_extras(records(400, seed=1))
    table = pa.Table.from_pandas(data, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("region"), "region", table.column("region").dictionary_encode()
    )
    src = tmp_path / "in.pq"
    pq.write_table(table, src, row_group_size=64)

    csv_out = tmp_path / "out.csv"
    assert score_file(src, csv_out, scorer, chunk_rows=100) == 400
    text = as_text(csv_out)
    assert list(text.columns) == [*data.columns, *OUTPUT_COLUMNS]
    assert text["patient_id"].tolist() == data["patient_id"].tolist()
    assert text["age"].astype(int).tolist() == data["age"].tolist()
    assert text["bmi"].astype(float).tolist() == data["bmi"].tolist()
    assert text["note"].tolist() == data["note"].tolist()
    assert_scores(scorer, data, text)

    pq_out = tmp_path / "out.parquet"
    assert score_file(src, pq_out, scorer, chunk_rows=100) == 400
    back = pq.read_table(pq_out)
    assert back.schema.field("age").type == pa.int64()
    assert pa.types.is_dictionary(back.schema.field("region").type)
    assert back.drop_columns(list(OUTPUT_COLUMNS)).equals(pq.read_table(src))
    assert_scores(scorer, data, back.to_pandas())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tiny_chunks_give_the_same_output_as_one_chunk(scorer: Artifact, tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "in.csv"
    with_extras(records(250, seed=2)).to_csv(src, index=False)
    one, tiny = tmp_path / f"one{suffix}", tmp_path / f"tiny{suffix}"
    calls: list[int] = []
    assert score_file(src, one, scorer, chunk_rows=1_000_000) == 250
    assert score_file(src, tiny, scorer, chunk_rows=7, progress=calls.append) == 250
    assert calls == [7] * 35 + [5]
    if suffix == ".csv":
        big, small = as_text(one), as_text(tiny)
    else:
        big, small = pq.read_table(one).to_pandas(), pq.read_table(tiny).to_pandas()
    # Every input cell is identical; scores agree to the last bit or two (the linear
    # predictor's matrix product rounds differently for different numbers of rows).
    rest = [c for c in big.columns if c not in OUTPUT_COLUMNS]
    pd.testing.assert_frame_equal(big[rest], small[rest])
    for name in OUTPUT_COLUMNS:
        np.testing.assert_allclose(small[name].astype(float), big[name].astype(float), rtol=1e-15, atol=0)


def test_values_are_matched_like_the_api_and_written_back_unchanged(scorer: Artifact, tmp_path: Path) -> None:
    """Case and spaces in categories, spaces around numbers: accepted, and the text is kept."""
    src, dest = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(
        "age,sex,bmi,children,smoker,region\n 39 , Male ,30.5,1,YES,southEast\n40,female, 22 ,0,no ,northwest\n",
        encoding="utf-8",
    )
    assert score_file(src, dest, scorer) == 2
    out = as_text(dest)
    assert [out.loc[0, "age"], out.loc[0, "sex"], out.loc[1, "smoker"]] == [" 39 ", " Male ", "no "]
    clean = pd.DataFrame(
        {
            "age": [39, 40],
            "sex": ["male", "female"],
            "bmi": [30.5, 22.0],
            "children": [1, 0],
            "smoker": ["yes", "no"],
            "region": ["southeast", "northwest"],
        }
    )
    assert_scores(scorer, clean, out)


def test_blank_lines_are_skipped(scorer: Artifact, tmp_path: Path) -> None:
    data = records(20, seed=3)
    lines = data.to_csv(index=False).splitlines()
    src = tmp_path / "in.csv"
    src.write_text("\n".join([*lines[:5], "", *lines[5:], "", ""]) + "\n", encoding="utf-8")
    dest = tmp_path / "out.csv"
    assert score_file(src, dest, scorer, chunk_rows=3) == 20
    assert_scores(scorer, data, as_text(dest))


def test_a_file_can_be_scored_in_place(scorer: Artifact, tmp_path: Path) -> None:
    """The output replaces the input only once it is complete, so src == dest is safe."""
    path = tmp_path / "patients.csv"
    data = records(300, seed=9)
    data.to_csv(path, index=False)
    assert score_file(path, path, scorer, chunk_rows=64) == 300
    out = as_text(path)
    assert list(out.columns) == [*FEATURES, *OUTPUT_COLUMNS]
    assert_scores(scorer, data, out)


# -- empty and unreadable input ------------------------------------------------------------


HEADERS_ONLY = ["age,sex,bmi,children,smoker,region,id\n", "age,sex,bmi,children,smoker,region", "", "\n\n"]


@pytest.mark.parametrize("content", HEADERS_ONLY)
def test_a_file_without_data_rows_is_refused_like_the_api_does(scorer: Artifact, tmp_path: Path, content: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(ValidationError) as caught:
        score_file(src, tmp_path / "out.csv", scorer)
    assert [(i.field, i.rule) for i in caught.value.issues] == [("file", "has no data rows")]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pandas(records(0)), empty)
    with pytest.raises(ValidationError, match="has no data rows"):
        score_file(empty, tmp_path / "out.csv", scorer)
    assert leftovers(tmp_path) == []


def test_garbage_and_missing_files_are_clear_errors(scorer: Artifact, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("age,sex,bmi,children,smoker,region\n19,f\xe9male,27.9,0,yes,southwest\n".encode("latin-1"))
    late_latin1 = tmp_path / "late.csv"  # past the sniffed first 64 KiB: pyarrow finds it
    late_latin1.write_bytes(
        records(3000).to_csv(index=False).encode() + "19,f\xe9male,27.9,0,yes,southwest\n".encode("latin-1")
    )
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("age,sex\n19,female\n", encoding="utf-8")
    parquet_as_csv = tmp_path / "parquet.csv"
    pq.write_table(pa.Table.from_pandas(records(10)), parquet_as_csv)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    cases: dict[Path, tuple[type[Exception], str]] = {
        binary: (ValidationError, "UTF-8|binary"),
        latin1: (ValidationError, "line 2, file: must be UTF-8"),
        late_latin1: (ValidationError, "line 3002, file: must be UTF-8"),
        not_parquet: (BatchError, "not a readable Parquet file"),
        parquet_as_csv: (ValidationError, "UTF-8|binary"),
        empty: (ValidationError, "has no data rows"),
        tmp_path / "missing.csv": (BatchError, "no such file"),
        folder: (BatchError, "is a directory"),
    }
    for src, (error, message) in cases.items():
        dest = tmp_path / "out.csv"
        with pytest.raises(error, match=message):
            score_file(src, dest, scorer)
        assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_unknown_suffixes_are_refused_before_anything_is_written(scorer: Artifact, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    records(5).to_csv(src, index=False)
    with pytest.raises(BatchError, match=r"cannot tell the input format from '\.txt'"):
        score_file(tmp_path / "in.txt", tmp_path / "out.csv", scorer)
    with pytest.raises(BatchError, match=r"output format from '\.xlsx'.*\.csv, \.parquet, \.pq"):
        score_file(src, tmp_path / "out.xlsx", scorer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_output_directory_must_exist(scorer: Artifact, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    records(5).to_csv(src, index=False)
    with pytest.raises(BatchError, match="does not exist"):
        score_file(src, tmp_path / "nowhere" / "out.csv", scorer)


# -- invalid rows --------------------------------------------------------------------------


def bad_file(tmp_path: Path, n: int, bad: dict[int, tuple[str, str]]) -> Path:
    """A CSV of ``n`` valid rows with the given (column, text) cells at the given data rows."""
    data = with_extras(records(n, seed=5)).astype(str)
    for row, (column, value) in bad.items():
        data.loc[row, column] = value
    src = tmp_path / "in.csv"
    data.to_csv(src, index=False)
    return src


def test_bad_rows_in_different_chunks_are_all_reported_by_line(scorer: Artifact, tmp_path: Path) -> None:
    src = bad_file(
        tmp_path,
        100,
        {3: ("sex", "unknown"), 30: ("age", "17"), 55: ("bmi", "abc"), 80: ("children", "")},
    )
    dest = tmp_path / "out.csv"
    dest.write_text("an earlier result\n", encoding="utf-8")
    rows_seen: list[int] = []
    with pytest.raises(ValidationError) as info:
        score_file(src, dest, scorer, chunk_rows=7, progress=rows_seen.append)
    err = info.value
    found = [(i.line, i.field, i.value, i.rule) for i in err.issues]
    assert found == [
        (5, "sex", "unknown", "must be one of female, male"),
        (32, "age", "17", "must be a whole number from 18 to 100"),
        (57, "bmi", "abc", "must be a number from 10 to 80"),
        (82, "children", None, "is required"),
    ]
    assert (err.total, err.truncated) == (4, False)
    assert "line 32, age: must be a whole number from 18 to 100 (got '17')" in str(err)
    assert sum(rows_seen) == 100  # the whole file was scanned
    assert dest.read_text(encoding="utf-8") == "an earlier result\n"
    assert leftovers(tmp_path) == []


def test_many_bad_rows_report_the_first_twenty_and_the_total(scorer: Artifact, tmp_path: Path) -> None:
    bad = {row: ("smoker", "maybe") for row in range(10, 400, 13)}  # 30 rows, many chunks
    src = bad_file(tmp_path, 400, bad)
    dest = tmp_path / "out.parquet"
    with pytest.raises(ValidationError) as info:
        score_file(src, dest, scorer, chunk_rows=50)
    err = info.value
    assert [i.line for i in err.issues] == [row + 2 for row in sorted(bad)][:20]
    assert (err.total, err.truncated) == (30, True)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_malformed_and_blank_lines_keep_line_numbers_exact(scorer: Artifact, tmp_path: Path) -> None:
    lines = records(30, seed=6).to_csv(index=False).splitlines()
    lines[4] += ",surplus"  # file line 5
    lines.insert(10, "")  # file line 11 is blank
    fields = lines[20].split(",")
    fields[4] = "si"
    lines[20] = ",".join(fields)  # file line 21: smoker is neither yes nor no
    lines[25] = lines[25].rsplit(",", 1)[0]  # file line 26 lacks its region
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        score_file(src, tmp_path / "out.csv", scorer, chunk_rows=4)
    found = [(i.line, i.field) for i in info.value.issues]
    assert found == [(5, "record"), (21, "smoker"), (26, "record")]
    assert info.value.issues[0].rule == "has 7 cells, the header has 6"
    assert not (tmp_path / "out.csv").exists()


def test_line_numbers_survive_pyarrow_block_boundaries(scorer: Artifact, tmp_path: Path) -> None:
    """A 3 MB file spans several read blocks (256 KiB each): skipped lines must be counted across them."""
    lines = with_extras(records(60_000, seed=10)).to_csv(index=False).splitlines()
    broken = {25_000: "surplus", 25_001: "blank", 40_000: "bad", 47_000: "surplus", 59_990: "bad"}
    for number, kind in broken.items():  # number is the file line; lines[0] is line 1
        if kind == "surplus":
            lines[number - 1] += ",x"
        elif kind == "blank":
            lines[number - 1] = ""
        else:
            lines[number - 1] = lines[number - 1].replace(",female,", ",f,").replace(",male,", ",m,")
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        score_file(src, tmp_path / "out.csv", scorer, chunk_rows=10_000)
    found = [(i.line, i.field) for i in info.value.issues]
    assert found == [(25_000, "record"), (40_000, "sex"), (47_000, "record"), (59_990, "sex")]


def test_parquet_nulls_are_reported_by_row(scorer: Artifact, tmp_path: Path) -> None:
    data = records(50, seed=7)
    table = pa.Table.from_pandas(data, preserve_index=False)
    ages = table.column("age").to_pylist()
    ages[11] = None
    regions = table.column("region").to_pylist()
    regions[40] = None
    table = table.set_column(0, "age", pa.array(ages, pa.int64()))
    table = table.set_column(5, "region", pa.array(regions, pa.string()))
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    with pytest.raises(ValidationError) as info:
        score_file(src, tmp_path / "out.csv", scorer, chunk_rows=8)
    assert [(i.line, i.field, i.rule) for i in info.value.issues] == [
        (12, "age", "is required"),
        (41, "region", "is required"),
    ]


def test_missing_columns_fail_before_reading_rows(scorer: Artifact, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    records(10).drop(columns=["smoker", "bmi"]).to_csv(src, index=False)
    calls: list[int] = []
    with pytest.raises(ValidationError) as info:
        score_file(src, tmp_path / "out.csv", scorer, progress=calls.append)
    assert [(i.field, i.rule) for i in info.value.issues] == [
        ("bmi", "column is required"),
        ("smoker", "column is required"),
    ]
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_repeated_columns_and_other_separators_are_refused(scorer: Artifact, tmp_path: Path) -> None:
    twice = tmp_path / "twice.csv"
    twice.write_text("age,sex,bmi,children,smoker,region,age\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="age: column appears 2 times"):
        score_file(twice, tmp_path / "out.csv", scorer)
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text("age;sex;bmi;children;smoker;region\n19;female;27.9;0;yes;southwest\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="separated by semicolons: chargecast reads comma-separated CSV"):
        score_file(semicolons, tmp_path / "out.csv", scorer)
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("age\tsex\tbmi\tchildren\tsmoker\tregion\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="separated by tabs"):
        score_file(tabs, tmp_path / "out.csv", scorer)


def test_blank_lines_before_the_header_keep_the_line_numbers(scorer: Artifact, tmp_path: Path) -> None:
    src = tmp_path / "blank.csv"
    src.write_text("\nage,sex,bmi,children,smoker,region\n19,female,27.9,0,maybe,southwest\n", encoding="utf-8")
    with pytest.raises(ValidationError) as caught:
        score_file(src, tmp_path / "out.csv", scorer)
    assert [(i.line, i.field) for i in caught.value.issues] == [(3, "smoker")]


def test_a_failing_progress_callback_leaves_no_output(scorer: Artifact, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    records(100).to_csv(src, index=False)

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(src, tmp_path / "out.csv", scorer, chunk_rows=10, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


# -- book totals and --summary -------------------------------------------------------------


def encoded(df: pd.DataFrame) -> npt.NDArray[np.float64]:
    return encode_columns({c: df[c].to_numpy() for c in FEATURES})


def streamed(scorer: Artifact, X: npt.NDArray[np.float64], chunk: int) -> BookTotal:
    book = BookTotal(scorer)
    for start in range(0, len(X), chunk):
        part = X[start : start + chunk]
        book.add(part, scorer.predict(part)[0])
    return book


@pytest.mark.parametrize("n", [1, MONTE_CARLO_BOOK, MONTE_CARLO_BOOK + 1, 5000, TOTAL_BLOCK])
def test_a_streamed_total_is_artifact_total_to_the_last_bit(scorer: Artifact, n: int) -> None:
    """Small books keep their rows (simulated total); larger ones only sums and group counts."""
    X = encoded(records(n, seed=n))
    whole = scorer.total(scorer.predict(X)[0], X)
    for chunk in (1 if n <= 100 else 999, 37, n):
        book = streamed(scorer, X, chunk)
        assert book.rows == n
        assert book.total() == whole, chunk


def test_a_streamed_total_does_not_depend_on_the_chunking(scorer: Artifact) -> None:
    n = 2 * TOTAL_BLOCK + 1234  # past one block: np.sum over the whole array would round differently
    X = encoded(records(n, seed=11))
    totals = {streamed(scorer, X, chunk).total() for chunk in (1000, 7777, TOTAL_BLOCK, n)}
    assert len(totals) == 1
    (total,) = totals
    whole = scorer.total(scorer.predict(X)[0], X)
    assert total.charges == pytest.approx(whole.charges, rel=1e-12)
    assert (total.low, total.high) == pytest.approx((whole.low, whole.high), rel=1e-12)
    assert total.low < total.charges < total.high


def test_total_from_counts_refuses_what_it_cannot_answer(scorer: Artifact) -> None:
    k = len(scorer.distribution.groups)
    with pytest.raises(ValueError, match="group counts"):
        scorer.distribution.total_from_counts(1000.0, [1.0] * k)  # small books are simulated from their rows
    with pytest.raises(ValueError, match="group counts"):
        scorer.distribution.total_from_counts(1000.0, [100.0] * (k + 1))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_summary_holds_the_rows_and_the_books_total(scorer: Artifact, tmp_path: Path, suffix: str) -> None:
    src, dest, summary = tmp_path / "in.csv", tmp_path / f"out{suffix}", tmp_path / "summary.json"
    data = with_extras(records(700, seed=5))
    data.to_csv(src, index=False)
    assert score_file(src, dest, scorer, chunk_rows=64, summary=summary) == 700
    X = encoded(data)
    whole = scorer.total(scorer.predict(X)[0], X)
    interval = {"low": whole.low, "high": whole.high, "level": scorer.level}
    assert json.loads(summary.read_bytes()) == {"rows": 700, "total": {"charges": whole.charges, "interval": interval}}
    assert whole.low < whole.charges < whole.high
    assert leftovers(tmp_path) == []


def test_a_small_books_summary_is_its_simulated_total(scorer: Artifact, tmp_path: Path) -> None:
    src, summary = tmp_path / "in.csv", tmp_path / "s.json"
    data = records(3, seed=6)
    data.to_csv(src, index=False)
    score_file(src, tmp_path / "out.csv", scorer, chunk_rows=1, summary=summary)
    X = encoded(data)
    charges = scorer.predict(X)[0]
    whole = scorer.total(charges, X)
    got = json.loads(summary.read_bytes())["total"]
    assert (got["charges"], got["interval"]["low"], got["interval"]["high"]) == (
        whole.charges,
        whole.low,
        whole.high,
    )
    assert got["charges"] == float(np.sum(charges))


def test_no_summary_is_written_when_scoring_fails(scorer: Artifact, tmp_path: Path) -> None:
    src, dest, summary = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "summary.json"
    data = records(50).astype(str)
    data.loc[40, "age"] = "17"
    data.to_csv(src, index=False)
    summary.write_text("earlier run", encoding="utf-8")
    with pytest.raises(ValidationError):
        score_file(src, dest, scorer, chunk_rows=10, summary=summary)
    assert summary.read_text(encoding="utf-8") == "earlier run"
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_summary_paths_are_checked_before_anything_is_written(scorer: Artifact, tmp_path: Path) -> None:
    src, dest = tmp_path / "in.csv", tmp_path / "out.csv"
    records(5).to_csv(src, index=False)
    (tmp_path / "dir.json").mkdir()
    cases = {
        tmp_path / "nowhere" / "s.json": "summary directory .* does not exist",
        tmp_path / "dir.json": "is a directory",
        src: "must not overwrite the input or the output",
        dest: "must not overwrite the input or the output",
    }
    for summary, message in cases.items():
        with pytest.raises(BatchError, match=message):
            score_file(src, dest, scorer, summary=summary)
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "in.csv"]


# -- packaging -----------------------------------------------------------------------------


def run_python(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_importing_the_module_does_not_load_pyarrow() -> None:
    code = "import sys, chargecast.batch; print('pyarrow' in sys.modules)"
    assert run_python(code).strip() == "False"


def test_missing_pyarrow_says_how_to_install_it(
    scorer: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.csv"
    records(3).to_csv(src, index=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    for source, dest in ((src, "out.parquet"), (tmp_path / "in.parquet", "out.csv")):
        source.touch()
        with pytest.raises(BatchError, match=r"Parquet files need pyarrow: pip install 'chargecast\[batch\]'"):
            score_file(source, tmp_path / dest, scorer)
    assert score_file(src, tmp_path / "out.csv", scorer) == 3  # CSV needs no pyarrow


# -- memory --------------------------------------------------------------------------------

MEASURE = """
    import json, resource, sys, tracemalloc
    from pathlib import Path
    from chargecast.model.artifact import Artifact
    from chargecast.batch import score_file

    model = Artifact.load(sys.argv[1])
    score_file(Path(sys.argv[5]), Path(sys.argv[3]), model)  # warm up: lazy imports, thread pool
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    rows = score_file(Path(sys.argv[2]), Path(sys.argv[3]), model, chunk_rows=int(sys.argv[4]))
    peak = tracemalloc.get_traced_memory()[1]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps({"rows": rows, "peak": peak, "rss": grown}))
"""


@pytest.mark.slow
def test_memory_stays_flat_on_a_large_file(model_path: Path, tmp_path: Path) -> None:
    """Peak memory follows the chunk, not the file: compare with scoring it as one chunk.

    Each run is a fresh process, so the peaks (Python and numpy via tracemalloc) are this
    run's; the one-chunk run is the baseline of whole-file loading.
    """
    n = 300_000
    src, warm = tmp_path / "big.csv", tmp_path / "warm.csv"
    with_extras(records(n, seed=8)).to_csv(src, index=False)
    records(50).to_csv(warm, index=False)

    def measure(chunk_rows: int) -> dict[str, int]:
        args = (str(model_path), str(src), str(tmp_path / "out.csv"), str(chunk_rows), str(warm))
        out = run_python(MEASURE, *args)
        result: dict[str, int] = json.loads(out)
        assert result["rows"] == n
        return result

    chunked, whole = measure(50_000), measure(n)
    assert chunked["peak"] < whole["peak"] / 2, (chunked, whole)
    assert chunked["rss"] < 200 * 2**20, chunked
