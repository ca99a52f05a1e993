"""The form page: derived from the schema, escaped, accessible, and well-formed HTML.

Assertions read the parsed page (stdlib ``html.parser``), not substrings, so they check
what a browser would see: which element carries which attribute and text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from chargecast import schema
from chargecast.model.artifact import Artifact
from chargecast.schema import FIELDS, CategoryField, NumberField
from chargecast.serving import form, formdata, predict
from chargecast.serving.app import create_app
from chargecast.serving.form import (
    PALETTE,
    REFERENCE,
    TEXT_PAIRS,
    dollars,
    render_message,
    render_page,
    share_of_patients,
    sign_class,
    signed_dollars,
)
from chargecast.serving.predict import FormResult
from chargecast.settings import Settings

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """Like the DOM's textContent, whitespace collapsed: "$5</span>;" reads "$5;"."""
        return " ".join(self._raw().split())

    def _raw(self) -> str:
        return "".join(c if isinstance(c, str) else c._raw() for c in self.children)

    def walk(self) -> list[Node]:
        out: list[Node] = [self]
        for c in self.children:
            if isinstance(c, Node):
                out.extend(c.walk())
        return out

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        def classes_match(node: Node) -> bool:
            wanted = attrs.get("class_", "").split()
            return all(c in node.attrs.get("class", "").split() for c in wanted)

        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag)
            and classes_match(n)
            and all(n.attrs.get(k) == v for k, v in attrs.items() if k != "class_")
        ]

    def by_id(self, id_: str) -> Node:
        found = self.find_all(id=id_)
        assert len(found) == 1, f"expected one #{id_}, found {len(found)}"
        return found[0]

    def ancestors(self) -> list[Node]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out


class TreeBuilder(HTMLParser):
    """Builds a tree and fails on any end tag that does not close the open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.open: list[Node] = [self.root]
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v if v is not None else "" for k, v in attrs}, self.open[-1])
        self.open[-1].children.append(node)
        if tag not in VOID:
            self.open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v if v is not None else "" for k, v in attrs}, self.open[-1])
        self.open[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"</{tag}> closes a void element"
        current = self.open.pop()
        assert current.tag == tag, f"</{tag}> closes <{current.tag}>"

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert [n.tag for n in builder.open] == ["#document"], "unclosed elements"
    assert builder.doctype.lower() == "doctype html"
    return builder.root


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


EXAMPLES = {f.name: num(f.example) if isinstance(f, NumberField) else f.example for f in FIELDS}
RESULT = FormResult(
    charges=12345.4,
    low=10000.6,
    high=15000.0,
    median=11000.2,
    level=0.9,
    contributions={"age": 2400.0, "sex": -150.0, "bmi": 1800.0, "children": 300.0, "smoker": -4000.0, "region": 0.0},
    baseline=11995.4,
)


def render(
    model: Artifact,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    result: FormResult | None = None,
) -> Node:
    return parse(render_page(values=values or {}, errors=errors or {}, result=result, model=model))


# -- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.name)
def test_each_field_is_generated_from_the_schema(model: Artifact, spec: schema.Field) -> None:
    doc = render(model)
    control = doc.by_id(spec.name)
    assert control.attrs["name"] == spec.name
    assert "required" in control.attrs
    (label,) = doc.find_all("label", **{"for": spec.name})
    assert label.text() == spec.label
    described = control.attrs["aria-describedby"].split()
    help_text = doc.by_id(described[0]).text()
    assert help_text.startswith(spec.help)
    assert "aria-invalid" not in control.attrs
    if isinstance(spec, NumberField):
        assert control.tag == "input"
        assert control.attrs["type"] == "number"
        assert control.attrs["min"] == num(spec.minimum)
        assert control.attrs["max"] == num(spec.maximum)
        assert control.attrs["step"] == ("1" if spec.integer else "any")
        assert control.attrs["inputmode"] == ("numeric" if spec.integer else "decimal")
        assert num(spec.example) in control.attrs["placeholder"]  # a hint, not a value
        assert control.attrs["value"] == ""  # nothing pre-filled
        assert f"From {num(spec.minimum)} to {num(spec.maximum)}" in help_text
    else:
        assert isinstance(spec, CategoryField)
        assert control.tag == "select"
        options = control.find_all("option")
        assert [o.attrs["value"] for o in options] == ["", *spec.choices]
        assert [o.text() for o in options] == ["Choose…", *spec.labels()]
        # nothing pre-chosen: only the empty placeholder is selected
        assert [o.attrs["value"] for o in options if "selected" in o.attrs] == [""]


def test_form_posts_urlencoded_to_root_with_one_control_per_field(model: Artifact) -> None:
    doc = render(model)
    (form,) = doc.find_all("form")
    assert (form.attrs["method"], form.attrs["action"]) == ("post", "/")
    assert form.attrs["enctype"] == "application/x-www-form-urlencoded"
    names = [n.attrs["name"] for n in form.walk() if n.tag in {"input", "select", "textarea"}]
    assert names == list(schema.FEATURES)
    assert len(form.find_all("button", type="submit")) == 1


def test_submitted_values_are_refilled_and_escaped(model: Artifact) -> None:
    nasty = "\"><script>alert('x')</script>"
    values = EXAMPLES | {"age": nasty, "bmi": "31.25", "sex": " Male ", "region": nasty}
    page = render_page(values=values, errors={}, result=None, model=model)
    assert "<script" not in page
    doc = parse(page)
    assert doc.by_id("age").attrs["value"] == nasty  # exactly what was typed, as text
    assert doc.by_id("bmi").attrs["value"] == "31.25"
    assert [o.attrs["value"] for o in doc.by_id("sex").find_all("option") if "selected" in o.attrs] == ["male"]
    # an unknown choice selects nothing real: the placeholder option asks again
    region = [o for o in doc.by_id("region").find_all("option") if "selected" in o.attrs]
    assert [(o.attrs["value"], o.text()) for o in region] == [("", "Choose…")]
    smoker = [o.attrs["value"] for o in doc.by_id("smoker").find_all("option") if "selected" in o.attrs]
    assert smoker == ["no"]  # a real choice replaces the placeholder's selection


def test_blank_submission_stays_blank(model: Artifact) -> None:
    doc = render(model, values={"age": "", "sex": "female"}, errors={"age": "Age is required"})
    assert doc.by_id("age").attrs["value"] == ""
    assert doc.by_id("bmi").attrs["value"] == ""  # not silently refilled with the example


def test_every_missing_field_is_an_error_naming_it(model: Artifact) -> None:
    # what a browser sends for the untouched empty form: every field, all blank
    values = {spec.name: "" for spec in FIELDS}
    _, errors = formdata.check_form(values)
    assert errors == {spec.name: f"{spec.label} is required" for spec in FIELDS}
    doc = render(model, values=values, errors=errors)
    (summary,) = doc.find_all(role="alert")
    assert [li.text() for li in summary.find_all("li")] == [f"{spec.label} is required" for spec in FIELDS]
    assert doc.by_id("smoker-error").text() == "Error: Smoker is required"
    assert not doc.find_all(id="result")


@pytest.mark.parametrize("missing", ["smoker", "sex", "region", "age"])
def test_one_missing_field_is_not_defaulted(model: Artifact, missing: str) -> None:
    spec = schema.FIELD_BY_NAME[missing]
    for values in (EXAMPLES | {missing: ""}, {k: v for k, v in EXAMPLES.items() if k != missing}):
        _, errors = formdata.check_form(values)
        assert errors == {missing: f"{spec.label} is required"}


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.01)
        yield c


def test_app_serves_an_empty_form_and_predicts_nothing_from_blanks(client: TestClient) -> None:
    fresh = parse(client.get("/").text)
    for spec in FIELDS:
        control = fresh.by_id(spec.name)
        if control.tag == "select":
            assert [o.attrs["value"] for o in control.find_all("option") if "selected" in o.attrs] == [""]
        else:
            assert control.attrs["value"] == ""
    response = client.post("/", data={spec.name: "" for spec in FIELDS} | {"submit": ""})
    assert response.status_code == 422
    doc = parse(response.text)
    assert not doc.find_all(id="result")
    assert not doc.find_all(id="charges")
    assert doc.by_id("smoker-error").text() == "Error: Smoker is required"
    missing_smoker = {k: v for k, v in EXAMPLES.items() if k != "smoker"}
    response = client.post("/", data=missing_smoker)
    assert response.status_code == 422
    doc = parse(response.text)
    assert [li.text() for li in doc.find_all(role="alert")[0].find_all("li")] == ["Smoker is required"]
    assert not doc.find_all(id="result")


# -- errors ------------------------------------------------------------------------------------


def test_errors_sit_next_to_their_field(model: Artifact) -> None:
    errors = {"region": "Region must be one of the four regions", "age": "Age must be a whole number from 18 to 100"}
    doc = render(model, values=EXAMPLES | {"age": "150", "region": "mars"}, errors=errors)
    for name, message in errors.items():
        control = doc.by_id(name)
        assert control.attrs["aria-invalid"] == "true"
        assert f"{name}-error" in control.attrs["aria-describedby"].split()
        error = doc.by_id(f"{name}-error")
        assert error.text() == f"Error: {message}"
        group = control.parent
        assert group is not None
        assert error.parent is group  # same field group, right above the input
        assert "has-error" in group.attrs["class"].split()
    for spec in FIELDS:
        if spec.name not in errors:
            assert "aria-invalid" not in doc.by_id(spec.name).attrs
            assert not doc.find_all(id=f"{spec.name}-error")


def test_error_summary_comes_first_and_links_to_fields(model: Artifact) -> None:
    errors = {"region": "Region is wrong", "age": "Age is wrong", "record": "Unknown field 'smoking'"}
    doc = render(model, values=EXAMPLES, errors=errors)
    (summary,) = doc.find_all(role="alert")
    (main,) = doc.find_all("main")
    assert main.walk()[1] is summary  # before the form and the result
    items = summary.find_all("li")
    assert [i.text() for i in items] == ["Age is wrong", "Region is wrong", "Unknown field 'smoking'"]
    assert [a.attrs["href"] for a in summary.find_all("a")] == ["#age", "#region"]  # no link to nowhere
    (title,) = doc.find_all("title")
    assert title.text().startswith("Error: ")


def test_no_error_summary_without_errors(model: Artifact) -> None:
    doc = render(model)
    assert not doc.find_all(role="alert")
    assert not doc.find_all(class_="error-message")
    (title,) = doc.find_all("title")
    assert not title.text().startswith("Error")


# -- result ------------------------------------------------------------------------------------


def test_result_panel_says_in_words_what_the_numbers_mean(model: Artifact) -> None:
    page = render_page(values=EXAMPLES, errors={}, result=RESULT, model=model)
    doc = parse(page)
    assert doc.by_id("charges").text() == "$12,345"
    assert doc.by_id("expected").text() == "Expected cost (what to budget): $12,345"
    assert doc.by_id("interval").text() == (
        "9 in 10 patients like this cost between $10,001 and $15,000; half cost less than $11,000."
    )
    # mean $12,345 > median $11,000: the page says why the budget figure is the higher one
    assert doc.by_id("mean-note").text() == (
        "The expected cost is the average over patients like this: "
        "it sits above what most of them cost, because a few cost far more."
    )
    baseline = doc.by_id("baseline").text()
    assert baseline.startswith(f"Compared with {REFERENCE} (expected cost $11,995)")
    assert "typical" not in page.lower()  # the mean is never called typical


def test_mean_note_only_claims_skew_when_the_mean_is_above_the_median(model: Artifact) -> None:
    for median in (RESULT.charges, RESULT.charges + 0.4, RESULT.charges + 500):  # same dollars, or higher
        doc = render(model, values=EXAMPLES, result=replace(RESULT, median=median))
        assert doc.by_id("mean-note").text() == "The expected cost is the average over patients like this."
    doc = render(model, values=EXAMPLES, result=replace(RESULT, median=RESULT.charges - 1))
    assert "because a few cost far more" in doc.by_id("mean-note").text()


@pytest.mark.parametrize(
    ("level", "share"),
    [
        (0.9, "9 in 10 patients"),
        (0.8, "8 in 10 patients"),
        (0.5, "5 in 10 patients"),
        (0.95, "95 in 100 patients"),
        (0.99, "99 in 100 patients"),
        (0.975, "975 in 1000 patients"),
        (0.9123, "91.2% of patients"),  # no count says it exactly: a percentage, not a rounded count
    ],
)
def test_the_level_is_said_as_a_count_of_patients(model: Artifact, level: float, share: str) -> None:
    assert share_of_patients(level) == share
    result = FormResult(1000, 500, 2000, 800, level, {}, 900)
    text = render(model, values=EXAMPLES, result=result).by_id("interval").text()
    assert text == f"{share} like this cost between $500 and $2,000; half cost less than $800."


def test_chart_has_one_bar_per_contribution_sorted_with_sign_classes(model: Artifact) -> None:
    doc = render(model, values=EXAMPLES, result=RESULT)
    (svg,) = doc.find_all("svg", class_="chart")
    assert svg.attrs["role"] == "img"
    title = doc.by_id(svg.attrs["aria-labelledby"])
    assert title.tag == "title"
    assert f"compared with {REFERENCE}" in title.text()
    assert "Smoker: no −$4,000" in title.text()
    bars = svg.find_all("rect", class_="bar")
    assert [b.attrs["data-feature"] for b in bars] == ["smoker", "age", "bmi", "children", "sex", "region"]
    for bar in bars:
        amount = RESULT.contributions[bar.attrs["data-feature"]]
        expected = "positive" if amount > 0 else "negative" if amount < 0 else "zero"
        assert expected in bar.attrs["class"].split()
    zero_x = {line.attrs["x1"] for line in svg.find_all("line", class_="zero-line")}
    assert len(zero_x) == 1  # one axis, drawn row by row
    x0 = float(zero_x.pop().rstrip("%"))
    for bar in bars:  # positive bars start at zero, negative ones end there
        x, w = float(bar.attrs["x"].rstrip("%")), float(bar.attrs["width"].rstrip("%"))
        if "positive" in bar.attrs["class"]:
            assert x == pytest.approx(x0)
        elif "negative" in bar.attrs["class"]:
            assert x + w == pytest.approx(x0, abs=0.02)
    labels = [" ".join(t.text() for t in g.find_all("text")) for g in svg.find_all("g", class_="row")]
    # the patient's values in words a clerk reads, not codes or the list of choices
    assert labels[:2] == ["Smoker: no −$4,000", "Age: 39 +$2,400"]
    assert labels[-1] == "Region: southeast $0"


def test_chart_labels_show_what_the_model_read(model: Artifact) -> None:
    values = EXAMPLES | {"age": " 52.0 ", "smoker": "YES", "region": " Southwest", "sex": "male"}
    labels = {g.attrs["data-feature"]: g.find_all("text", class_="label")[0].text() for g in _rows(model, values)}
    assert labels == {
        "age": "Age: 52",
        "sex": "Sex: male",
        "bmi": "Body mass index: 30.4",
        "children": "Children: 1",
        "smoker": "Smoker: yes",
        "region": "Region: southwest",
    }


def _rows(model: Artifact, values: dict[str, str]) -> list[Node]:
    return render(model, values=values, result=RESULT).find_all("g", class_="row")


def _dollars_at(svg: Node) -> tuple[list[float], list[float]]:
    """(tick dollars, tick x in percent) of a range chart."""
    ticks = svg.find_all("g", class_="tick")
    values = [float(t.attrs["data-dollars"]) for t in ticks]
    xs = [float(t.find_all("line")[0].attrs["x1"].rstrip("%")) for t in ticks]
    return values, xs


def check_range_chart(doc: Node, result: FormResult) -> None:
    """The range SVG draws the result's own numbers where its own axis says they belong."""
    svg = doc.by_id("range")
    assert svg.tag == "svg"
    assert svg.attrs["role"] == "img"
    title = doc.by_id(svg.attrs["aria-labelledby"])
    assert title.tag == "title"
    assert title.parent is svg
    assert dollars(result.low) in title.text()
    assert dollars(result.high) in title.text()
    assert dollars(result.median) in title.text()
    assert dollars(result.charges) in title.text()
    values, xs = _dollars_at(svg)
    assert 2 <= len(values) <= 4  # few enough labels for a phone
    assert xs[0] == pytest.approx(0)
    assert xs[-1] == pytest.approx(100)
    steps = np.diff(values)
    assert np.allclose(steps, steps[0])
    assert steps[0] > 0
    assert values[0] <= min(result.low, result.median, result.charges)
    assert values[-1] >= max(result.high, result.charges)
    texts = [t.find_all("text")[0].text() for t in svg.find_all("g", class_="tick")]
    assert texts == [dollars(v) for v in values]  # labelled in dollars

    def x_of(v: float) -> float:
        return (v - values[0]) / (values[-1] - values[0]) * 100

    (band,) = svg.find_all("rect", class_="band")
    (median,) = svg.find_all("line", class_="median")
    (mean,) = svg.find_all("circle", class_="mean")
    x_low = float(band.attrs["x"].rstrip("%"))
    x_high = x_low + float(band.attrs["width"].rstrip("%"))
    x_med = float(median.attrs["x1"].rstrip("%"))
    x_mean = float(mean.attrs["cx"].rstrip("%"))
    assert x_low == pytest.approx(x_of(result.low), abs=0.01)
    assert x_high == pytest.approx(x_of(result.high), abs=0.02)
    assert x_med == pytest.approx(x_of(result.median), abs=0.01)
    assert x_mean == pytest.approx(x_of(result.charges), abs=0.01)
    assert x_low <= x_med <= x_high
    if result.charges > result.median:
        assert x_mean > x_med
    (mean_label,) = svg.find_all("text", class_="mean-label")
    (median_label,) = svg.find_all("text", class_="median-label")
    assert mean_label.text() == f"Expected {dollars(result.charges)}"
    assert median_label.text() == f"Median {dollars(result.median)}"
    assert float(mean_label.attrs["y"]) < float(band.attrs["y"])  # the labels sit on opposite sides
    assert float(median_label.attrs["y"]) > float(band.attrs["y"]) + float(band.attrs["height"])


@pytest.mark.parametrize(
    "result",
    [
        RESULT,
        FormResult(9100.0, 2900.0, 31000.0, 6400.0, 0.9, {}, 13000.0),  # wide and skewed
        FormResult(41000.0, 37500.0, 47800.0, 40100.0, 0.95, {}, 13000.0),  # narrow, far from zero
        FormResult(1500.0, 0.0, 4200.0, 900.0, 0.8, {}, 13000.0),  # floored at zero
        FormResult(94938.0, 93544.0, 103808.0, 93896.0, 0.9, {}, 13000.0),  # six-figure tick labels
    ],
    ids=["example", "skewed", "narrow", "zero", "six-figures"],
)
def test_range_chart_draws_range_median_and_mean_on_one_axis(model: Artifact, result: FormResult) -> None:
    check_range_chart(render(model, values=EXAMPLES, result=result), result)


def test_screen_readers_get_the_same_numbers_as_a_table(model: Artifact) -> None:
    doc = render(model, values=EXAMPLES, result=RESULT)
    (table,) = doc.find_all("table")
    assert "visually-hidden" in (table.parent.attrs.get("class", "") if table.parent else "")
    rows = [(r.find_all("th")[0].text(), r.find_all("td")[0].text()) for r in table.find_all("tbody")[0].find_all("tr")]
    svg_rows = [
        (g.find_all("text", class_="label")[0].text(), g.find_all("text", class_="amount")[0].text())
        for g in doc.find_all("g", class_="row")
    ]
    assert rows == svg_rows
    assert "$11,995" in table.find_all("caption")[0].text()


def test_real_prediction_renders_and_adds_up(model: Artifact) -> None:
    record = {"age": "70", "sex": "male", "bmi": "34.1", "children": "2", "smoker": "yes", "region": "northwest"}
    encoded = schema.encode_record(record)
    result = predict.form_result(model, encoded)
    prediction = model.predict_record(record)
    assert (result.charges, result.low, result.high) == (prediction.charges, prediction.low, prediction.high)
    assert result.median == model.quantiles_row(prediction.charges, encoded, [0.5])[0]
    assert sum(result.contributions.values()) + result.baseline == pytest.approx(prediction.charges)
    doc = render(model, values=record, result=result)
    assert doc.by_id("charges").text() == dollars(prediction.charges)
    assert len(doc.find_all("rect", class_="bar")) == len(schema.FEATURES)
    check_range_chart(doc, result)
    # 70 is a valid age but beyond the training data (18-64): the page says so
    (caution,) = doc.find_all(class_="caution")
    assert "Age 70" in caution.text()
    assert not render(model, values=EXAMPLES, result=result).find_all(class_="caution")


@pytest.mark.parametrize(
    "record",
    [
        {"age": "52", "sex": "male", "bmi": "34.1", "children": "2", "smoker": "yes", "region": "northwest"},
        {"age": "23", "sex": "female", "bmi": "24.5", "children": "0", "smoker": "no", "region": "southwest"},
        {"age": "58", "sex": "female", "bmi": "28.0", "children": "1", "smoker": "no", "region": "northeast"},
    ],
    ids=["obese-smoker", "young-non-smoker", "older-non-smoker"],
)
def test_real_wording_uses_the_artifacts_own_interval_and_median(model: Artifact, record: dict[str, str]) -> None:
    encoded = schema.encode_record(record)
    result = predict.form_result(model, encoded)
    low, high = model.distribution.apply_row(result.charges, encoded)
    low_q, median, high_q = model.quantiles_row(result.charges, encoded, [0.05, 0.5, 0.95])
    assert model.level == 0.9
    assert (result.low, result.high) == (low, high) == pytest.approx((low_q, high_q))  # equal-tailed
    assert result.median == median
    doc = render(model, values=record, result=result)
    assert doc.by_id("interval").text() == (
        f"9 in 10 patients like this cost between {dollars(low)} and {dollars(high)}; "
        f"half cost less than {dollars(median)}."
    )
    skew_claimed = "because a few cost far more" in doc.by_id("mean-note").text()
    assert skew_claimed == (round(result.charges) > round(median))
    check_range_chart(doc, result)


# -- page --------------------------------------------------------------------------------------


def test_page_is_accessible_self_contained_and_has_the_footer(model: Artifact) -> None:
    page = render_page(values=EXAMPLES, errors={"age": "Age is wrong"}, result=RESULT, model=model)
    doc = parse(page)
    (html,) = doc.find_all("html")
    assert html.attrs["lang"] == "en"
    assert doc.find_all("meta", name="viewport")[0].attrs["content"] == "width=device-width, initial-scale=1"
    assert len(doc.find_all("h1")) == 1
    assert len(doc.find_all("main")) == 1
    assert not doc.find_all("script")
    assert not re.search(r"(?:https?:)?//[a-z]", page, re.IGNORECASE), "no external resources"
    assert not doc.find_all("link", rel="stylesheet")
    (style,) = doc.find_all("style")
    assert ":focus-visible" in style.text()
    ids = [n.attrs["id"] for n in doc.walk() if "id" in n.attrs]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for node in doc.walk():  # every aria reference points at something
        for attr in ("aria-describedby", "aria-labelledby"):
            for ref in node.attrs.get(attr, "").split():
                assert ref in ids, f"{attr}={ref}"
    (footer,) = doc.find_all("footer")
    assert model.version in footer.text()
    assert {a.attrs["href"] for a in footer.find_all("a")} == {"/docs", "/api/v1/model"}
    assert "estimate from a model trained on simulated textbook data" in footer.text()


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_helper_matches_wcag_reference_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize(("fg", "bg"), TEXT_PAIRS)
def test_text_colours_meet_wcag_aa(fg: str, bg: str) -> None:
    assert contrast(PALETTE[fg], PALETTE[bg]) >= 4.5


@pytest.mark.parametrize("name", ["border", "up", "down", "error", "focus"])
def test_non_text_colours_meet_three_to_one(name: str) -> None:
    for bg in ("card", "page"):
        assert contrast(PALETTE[name], PALETTE[bg]) >= 3.0


@pytest.mark.parametrize(
    ("amount", "plain", "signed", "cls"),
    [
        (12345.4, "$12,345", "+$12,345", "positive"),
        (-8012.5, "−$8,012", "−$8,012", "negative"),  # round half to even, like round()
        (0.4, "$0", "$0", "zero"),
        (-0.4, "$0", "$0", "zero"),
        (float("nan"), "n/a", "n/a", "zero"),
    ],
)
def test_dollar_formatting(amount: float, plain: str, signed: str, cls: str) -> None:
    assert (dollars(amount), signed_dollars(amount), sign_class(amount)) == (plain, signed, cls)


# -- the templates ----------------------------------------------------------------------------
def test_every_value_is_escaped_where_the_page_shows_it(model: Artifact) -> None:
    nasty = "<b>&\"'"
    errors = {"age": f"Age {nasty}", form.FORM_ERROR_KEY: f"form {nasty}", nasty: f"other {nasty}"}
    page = render_page(values=EXAMPLES | {"age": nasty}, errors=errors, result=RESULT, model=model)
    assert "<b>" not in page
    doc = parse(page)
    assert doc.by_id("age-error").text() == f"Error: Age {nasty}"
    summary = [li.text() for li in doc.find_all(role="alert")[0].find_all("li")]
    assert summary == [f"Age {nasty}", f"form {nasty}", f"other {nasty}"]
    assert [a.attrs["href"] for a in doc.find_all(role="alert")[0].find_all("a")] == ["#age"]  # only fields link


def test_the_message_page_escapes_its_sentence() -> None:
    doc = parse(render_message("not ready: <script>alert(1)</script> & more"))
    assert not doc.find_all("script")
    (p,) = doc.find_all("p")
    assert p.text() == "not ready: <script>alert(1)</script> & more"
    assert not doc.find_all("style")  # no stylesheet: its policy allows none


def test_the_page_carries_no_whitespace_from_the_templates_layout(model: Artifact) -> None:
    """Templates are laid out one element a line; none of that reaches the page's text."""
    page = render_page(values=EXAMPLES, errors={"age": "Age is wrong"}, result=RESULT, model=model)
    assert "\n" not in page
    assert "  " not in page


def test_templates_are_compiled_once_and_never_read_again(model: Artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reads(*args: object) -> None:
        raise AssertionError("a template was read from disk after start-up")

    monkeypatch.setattr(type(form._ENV.loader), "get_source", no_reads)
    render_page(values=EXAMPLES, errors={"age": "Age is wrong"}, result=RESULT, model=model)
    render_page(values={}, errors={}, result=None, model=model)
    render_message("not ready")
