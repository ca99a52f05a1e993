"""The schema is the single source of truth: every rule is exercised here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargecast import schema
from chargecast.schema import FEATURES, ValidationError, encode_columns, encode_record, encode_records

GOOD: dict[str, Any] = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}


def test_fields_follow_the_data_set_columns() -> None:
    assert FEATURES == ("age", "sex", "bmi", "children", "smoker", "region")
    assert [f["name"] for f in schema.describe()] == list(FEATURES)


def test_good_record_encodes_categories_as_choice_index() -> None:
    assert encode_record(GOOD) == (39.0, 0.0, 30.4, 1.0, 0.0, 2.0)


def test_categories_ignore_case_and_spaces() -> None:
    assert encode_record(GOOD | {"sex": " Male ", "region": "NorthWest"})[1::4] == (1.0, 1.0)


def test_numbers_may_arrive_as_strings_or_integral_floats() -> None:
    assert encode_record(GOOD | {"age": "40", "children": 2.0, "bmi": "25"})[:4] == (40.0, 0.0, 25.0, 2.0)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("age", 17, "must be a whole number from 18 to 100"),
        ("age", 101, "must be a whole number from 18 to 100"),
        ("age", 30.5, "must be a whole number from 18 to 100"),
        ("age", True, "must be a whole number from 18 to 100"),
        ("age", [30], "must be a whole number from 18 to 100"),
        ("bmi", 9.99, "must be a number from 10 to 80"),
        ("bmi", "heavy", "must be a number from 10 to 80"),
        ("bmi", math.nan, "must be a finite number"),
        ("bmi", math.inf, "must be a finite number"),
        ("children", -1, "must be a whole number from 0 to 10"),
        ("sex", "other", "must be one of female, male"),
        ("smoker", True, "must be one of no, yes"),
        ("region", "north", "must be one of northeast, northwest, southeast, southwest"),
        ("region", None, "is required"),
        ("sex", "  ", "is required"),
    ],
)
def test_each_rule_names_field_and_rule(field: str, value: Any, rule: str) -> None:
    with pytest.raises(ValidationError) as err:
        encode_record(GOOD | {field: value})
    [issue] = err.value.issues
    assert (issue.field, issue.rule) == (field, rule)
    assert field in str(err.value)


def test_missing_and_unknown_fields_are_all_reported() -> None:
    record = {k: v for k, v in GOOD.items() if k != "bmi"} | {"smoking": "no"}
    with pytest.raises(ValidationError) as err:
        encode_record(record)
    assert {(i.field, i.rule) for i in err.value.issues} == {
        ("bmi", "is required"),
        ("smoking", "is not a known field"),
    }


def test_non_object_record_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be an object"):
        encode_record([1, 2, 3])


def test_lists_name_the_index_of_the_bad_record() -> None:
    with pytest.raises(ValidationError) as err:
        encode_records([GOOD, GOOD | {"age": 5}])
    assert [i.field for i in err.value.issues] == ["[1].age"]


def test_columns_match_records_and_report_row_numbers() -> None:
    rows = [GOOD, GOOD | {"sex": "male", "bmi": 22.0, "region": "northeast"}]
    cols = {k: np.array([r[k] for r in rows]) for k in FEATURES}
    np.testing.assert_array_equal(encode_columns(cols), encode_records(rows))
    cols["age"] = np.array(["40", "x"])
    cols["region"] = np.array(["southeast", "mars"])
    with pytest.raises(ValidationError) as err:
        encode_columns(cols, first_row=2)
    assert [(i.line, i.field, i.value) for i in err.value.issues] == [(3, "age", "x"), (3, "region", "mars")]


def test_columns_missing_a_column() -> None:
    cols = {k: np.array([GOOD[k]]) for k in FEATURES if k != "smoker"}
    with pytest.raises(ValidationError, match="smoker: column is required"):
        encode_columns(cols)


def test_many_bad_rows_are_truncated_with_total() -> None:
    n = 50
    cols = {k: np.array([GOOD[k]] * n) for k in FEATURES}
    cols["age"] = np.full(n, 200)
    with pytest.raises(ValidationError) as err:
        encode_columns(cols)
    assert err.value.truncated
    assert err.value.total == n
    assert len(err.value.issues) == schema.MAX_REPORTED_ISSUES
    assert "30 more" in str(err.value)


def test_issue_as_dict_is_json_safe() -> None:
    with pytest.raises(ValidationError) as err:
        encode_record(GOOD | {"bmi": math.nan})
    assert err.value.issues[0].as_dict() == {"field": "bmi", "rule": "must be a finite number", "value": "nan"}


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))


@given(st.dictionaries(st.sampled_from([*FEATURES, "extra"]), values))
def test_any_input_either_encodes_in_range_or_raises_validation_error(record: dict[str, Any]) -> None:
    try:
        row = encode_record(record)
    except ValidationError as err:
        issues = err.issues
    else:
        issues = []
    if issues:
        return
    for spec, value in zip(schema.FIELDS, row, strict=True):
        if isinstance(spec, schema.NumberField):
            assert spec.minimum <= value <= spec.maximum
        else:
            assert 0 <= value < len(spec.choices)


def test_one_huge_cell_does_not_blow_up_memory() -> None:
    """astype(str) pads to the longest cell; a 10 MB cell in 100k rows would need 4 TB."""
    n = 100_000
    cols = {k: np.array([GOOD[k]] * n, dtype=object) for k in FEATURES}
    cols["region"][7] = "x" * 10_000_000
    with pytest.raises(ValidationError) as err:
        encode_columns(cols)
    [issue] = err.value.issues
    assert (issue.line, issue.field) == (8, "region")
    assert len(issue.as_dict()["value"]) <= 81
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("text", ["5_2", "٥٢", "0x20", "nan", "4O"])
def test_only_plain_ascii_decimals_count_as_numbers(text: str) -> None:
    """float() accepts "5_2" and Arabic-Indic digits; a record and a table must not."""
    with pytest.raises(ValidationError):
        encode_record(GOOD | {"age": text})
    cols = {k: np.array([str(GOOD[k])] * 2) for k in FEATURES}
    cols["age"] = np.array(["40", text])
    with pytest.raises(ValidationError) as err:
        encode_columns(cols, first_row=2)
    assert [(i.line, i.field) for i in err.value.issues] == [(3, "age")]


def _near(spec: schema.Field) -> st.SearchStrategy[Any]:
    """Values a client might send for a field: good ones, edge ones and wrong ones, as JSON
    types and as the text a CSV cell holds."""
    junk = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.floats(allow_nan=True, allow_infinity=True))
    if isinstance(spec, schema.NumberField):
        lo, hi = int(spec.minimum), int(spec.maximum)
        number = st.one_of(
            st.integers(lo - 2, hi + 2),
            st.floats(lo - 1, hi + 1),
            st.sampled_from([spec.minimum, spec.maximum, spec.minimum - 0.5, spec.maximum + 1e-9, -0.0]),
        )
        text = number.map(str) | number.map(lambda v: f" {v} ") | st.sampled_from(["", " ", "1e1", "+20", "0x20", "4O"])
        return st.one_of(number, text, junk)
    assert isinstance(spec, schema.CategoryField)
    choice = st.sampled_from(spec.choices)
    variants = st.one_of(
        choice, choice.map(str.upper), choice.map(lambda c: f"  {c.capitalize()} "), choice.map(lambda c: c[:-1])
    )
    return st.one_of(variants, junk, st.integers(0, 3))


RECORDS = st.lists(st.fixed_dictionaries({spec.name: _near(spec) for spec in schema.FIELDS}), min_size=1, max_size=3)


@given(RECORDS, st.booleans())
def test_one_record_and_column_wise_validation_agree_on_every_input(
    records: list[dict[str, Any]], as_text: bool
) -> None:
    """The JSON route checks records one by one, CSV and training check columns at once:
    the same values must pass or fail alike, with the same rule, and encode identically."""
    if as_text:  # what a CSV cell holds: the text of the value (None becomes an empty cell)
        records = [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]
    one: list[tuple[int, str, str]] = []
    encoded: list[list[float]] = []
    for i, record in enumerate(records):
        values, issues = schema.validate_record(record)
        one += [(i, issue.field, issue.rule) for issue in issues]
        encoded.append(values)
    # Text columns take numpy's vectorised parse. A numpy str array drops trailing NULs, so
    # text with a NUL stays an object column (as from Parquet; CSV refuses NUL as binary).
    plain = as_text and not any("\x00" in v for r in records for v in r.values())
    kind = str if plain else object
    columns = {name: np.array([r[name] for r in records], dtype=kind) for name in FEATURES}
    if one:
        with pytest.raises(ValidationError) as err:
            encode_columns(columns, first_row=0)
        assert not err.value.truncated
        assert [(i.line, i.field, i.rule) for i in err.value.issues] == one
    else:
        np.testing.assert_array_equal(encode_columns(columns, first_row=0), np.array(encoded))


def test_a_number_with_a_space_only_str_strip_knows_reads_alike_in_both_validators() -> None:
    """str.strip drops "\\x1f", float() does not: an object column holding "30.4\\x1f" used to
    raise ValueError out of encode_columns (a Parquet file's string column takes that path)."""
    record = GOOD | {"bmi": "30.4\x1f"}
    columns = {name: np.array([record[name]], dtype=object) for name in FEATURES}
    np.testing.assert_array_equal(encode_columns(columns), encode_records([record]))
