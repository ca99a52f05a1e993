"""The one CSV format: header matching, line numbering, refusal of output columns, writing."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chargecast import csvformat
from chargecast.schema import ValidationError

HEADER = "age,sex,bmi,children,smoker,region"
GOOD = "39,female,30.4,1,no,southeast"
ROW = "39,female,30.4,1,no,southeast"


def reader(text: str, *, target: bool = False, max_rows: int | None = None) -> csvformat.Reader:
    blocks = csvformat.buffer_blocks(bytearray(text.encode()))
    return csvformat.Reader(blocks, target=target, max_rows=max_rows)


def validate(text: str, **kwargs: bool) -> None:
    r = reader(text, **kwargs)
    for chunk in r.chunks(size=2):
        _, found, count = csvformat.encode(chunk, r.header)
        r.problems.add(found, count)
    r.problems.raise_if_any()


def problems_of(text: str, **kwargs: bool) -> list[tuple[int | None, str]]:
    with pytest.raises(ValidationError) as caught:
        validate(text, **kwargs)
    return [(i.line, i.field) for i in caught.value.issues]


@pytest.mark.parametrize(
    "header",
    [
        "Age,Sex,BMI,Children,Smoker,Region",
        " age , SEX ,bmi,children,smoker,region",
        "\ufeffage,sex,bmi,children,smoker,region",
    ],
)
def test_headers_match_whatever_their_case_space_or_bom(header: str) -> None:
    r = reader(f"{header}\n{ROW}\n")
    assert r.header.columns == {"age": 0, "sex": 1, "bmi": 2, "children": 3, "smoker": 4, "region": 5}
    assert r.header.cells[0].strip().lower() == "age"


def test_records_are_numbered_by_the_line_they_start_on_across_quoted_newlines_and_blanks() -> None:
    text = (
        f'{HEADER},note\n{ROW},"two\nlines"\n\n17,female,30.4,1,no,southeast,x\n'
        f'{ROW},"a\nb\nc"\n39,female,30.4,1,maybe,southeast,y\n'
    )
    assert problems_of(text) == [(5, "age"), (9, "smoker")]


def test_a_ragged_record_is_named_by_its_line() -> None:
    assert problems_of(f"{HEADER}\n{ROW}\n39,female\n") == [(3, "record")]


@pytest.mark.parametrize("column", csvformat.OUTPUT_COLUMNS)
def test_an_input_column_named_like_an_output_is_refused(column: str) -> None:
    assert problems_of(f"{HEADER},{column.upper()}\n{ROW},1\n") == [(1, column)]


def test_training_needs_the_target_and_scoring_refuses_it() -> None:
    assert reader(f"{HEADER},charges\n{ROW},1000\n", target=True).header.columns["charges"] == 6
    assert problems_of(f"{HEADER}\n{ROW}\n", target=True) == [(1, "charges")]


@pytest.mark.parametrize(("sep", "label"), [(";", "semicolons"), ("\t", "tabs")])
def test_another_separator_gets_a_hint(sep: str, label: str) -> None:
    with pytest.raises(ValidationError) as caught:
        reader(HEADER.replace(",", sep) + "\n" + ROW.replace(",", sep) + "\n")
    assert label in str(caught.value.issues[0])
    assert "comma-separated" in str(caught.value.issues[0])


def test_bad_utf8_and_binary_files_name_their_line() -> None:
    with pytest.raises(ValidationError) as caught:
        list(csvformat.text_lines(csvformat.buffer_blocks(bytearray(f"{HEADER}\n{ROW}\n".encode() + b"\xff\n"))))
    assert (caught.value.issues[0].line, caught.value.issues[0].rule) == (3, "must be UTF-8 encoded CSV text")
    with pytest.raises(ValidationError, match="binary"):
        list(csvformat.text_lines([f"{HEADER}\n".encode(), b"\x00\x01\n"]))


def test_lines_are_the_same_whatever_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (f"{HEADER},note\n" + f'{ROW},"é\n😀"\n' * 500).encode()
    whole = list(csvformat.text_lines([text]))
    monkeypatch.setattr(csvformat, "BLOCK", 7)
    assert list(csvformat.text_lines(csvformat.buffer_blocks(bytearray(text)))) == whole
    assert list(csvformat.text_lines(csvformat.file_blocks(io.BytesIO(text)))) == whole


def test_too_many_rows_stop_the_reader() -> None:
    with pytest.raises(csvformat.TooManyRowsError):
        list(reader(f"{HEADER}\n{ROW}\n{ROW}\n{ROW}\n", max_rows=2).chunks())


def test_written_rows_keep_the_cells_quote_only_where_needed_and_round_to_cents() -> None:
    r = reader(f'{HEADER},note\r\n{ROW},"plain"\r\n{ROW},"a,b"\r\n')
    (chunk,) = list(r.chunks())
    writer = csvformat.Writer(r.header)
    charges = np.array([1234.5678, 1.005])
    out = writer.head + writer.rows(chunk.rows, charges, charges - 1, charges + 1)
    assert out.decode() == (
        f"{HEADER},note,charges,charges_low,charges_high\r\n"
        f"{ROW},plain,1234.57,1233.57,1235.57\r\n"
        f'{ROW},"a,b",1.00,0.00,2.00\r\n'
    )


@pytest.mark.parametrize("eol", ["\n", "\r", "\r\n"])
@pytest.mark.parametrize("cell", ["a\rb", "a\nb", "a\r\nb", "\r", 'x,"y"\r'])
def test_a_cell_holding_any_line_break_is_quoted_whatever_the_files_ending(eol: str, cell: str) -> None:
    """The csv module quotes only its own terminator's characters; a bare CR in an LF file
    would come back as two records."""
    source = f'note,{HEADER}{eol}"{cell.replace(chr(34), chr(34) * 2)}",{GOOD}{eol}'
    reader = csvformat.Reader([source.encode()], target=False)
    (chunk,) = list(reader.chunks())
    assert chunk.rows[0][0] == cell
    writer = csvformat.Writer(reader.header)
    ones = np.ones(1)
    out = (writer.head + writer.rows(chunk.rows, ones, ones, ones, plain=reader.plain)).decode()
    assert out.endswith(f"1.00,1.00,1.00{eol}")
    again = csvformat.Reader([out.encode()], target=True)
    assert [row[0] for c in again.chunks() for row in c.rows] == [cell]


def test_a_second_patient_ref_column_is_refused() -> None:
    """Two patient_ref columns would leave the audit log guessing which one names the patient."""
    text = f"patient_ref,age,sex,bmi,children,smoker,region,Patient_Ref\nP-1,{ROW},P-2\n"
    with pytest.raises(ValidationError) as caught:
        reader(text)
    assert [(i.line, i.field, i.rule) for i in caught.value.issues] == [(1, "patient_ref", "column appears 2 times")]
    validate(f"patient_ref,age,sex,bmi,children,smoker,region\nP-1,{ROW}\n")  # one is fine
