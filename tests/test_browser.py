"""The form in a real browser: type, submit, read the answer, see the errors, on desktop and phone.

The real app runs in a thread under uvicorn; set ``CHARGECAST_BASE_URL`` to drive a
running service instead. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from browser import CHROMIUM, TIMEOUT_MS, chromium
from chargecast import schema
from chargecast.model.artifact import Artifact
from chargecast.serving import predict
from chargecast.serving.app import create_app
from chargecast.serving.form import REFERENCE, dollars
from chargecast.settings import Settings
from tools import served

pytestmark = [
    pytest.mark.slow,
    # CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file() and os.environ.get("CI") != "true",
        reason=f"no Chromium at {CHROMIUM} (apt install chromium)",
    ),
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PATIENT = {"age": "52", "sex": "male", "bmi": "34.1", "children": "2", "smoker": "yes", "region": "northwest"}


@pytest.fixture(scope="module")
def base_url(model_dir: Path) -> Iterator[str]:
    """The real app (``create_app``) served by uvicorn on a free local port, in a thread."""
    if url := os.environ.get("CHARGECAST_BASE_URL"):
        yield url.rstrip("/")
        return
    with served(create_app(Settings(model_dir=model_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def screen(browser: Browser) -> Iterator[Callable[..., Page]]:
    """A fresh tab on a screen of the given size; ``mobile`` also honours <meta name=viewport> like a phone."""
    contexts = []

    def open_screen(width: int = 1280, height: int = 900, *, mobile: bool = False, scale: float = 1.0) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=scale,
            is_mobile=mobile,
            has_touch=mobile,
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_screen
    for context in contexts:
        context.close()


@pytest.fixture
def page(screen: Callable[..., Page]) -> Page:
    """A desktop-sized tab."""
    return screen()


def text(page: Page, selector: str) -> str:
    """The one matching element's rendered text, whitespace collapsed."""
    return " ".join((page.locator(selector).text_content() or "").split())


def count(page: Page, selector: str) -> int:
    return page.locator(selector).count()


def value(page: Page, field: str) -> str:
    return page.locator(f"#{field}").input_value()


def click_and_load(page: Page, selector: str) -> None:
    """A real mouse click, then wait for the page it navigates to."""
    with page.expect_navigation(wait_until="load"):
        page.click(selector)


def submit(page: Page, base_url: str, record: dict[str, str]) -> None:
    page.goto(base_url + "/")
    for spec in schema.FIELDS:
        field = page.locator(f"#{spec.name}")
        if isinstance(spec, schema.CategoryField):
            field.select_option(record[spec.name])  # raises if there is no such option
        else:
            field.fill(record[spec.name])
        expect(field).to_have_value(record[spec.name])  # an input that ignores typing fails here
    click_and_load(page, "button[type=submit]")


def test_empty_form_starts_blank_with_nothing_chosen(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    assert text(page, "h1") == "Estimate a patient's medical charges"
    for spec in schema.FIELDS:
        assert value(page, spec.name) == "", spec.name
    # no real option is selected, by default or otherwise, and no radio is checked
    chosen = page.evaluate(
        "() => [...document.querySelectorAll('option')].filter(o => (o.selected || o.defaultSelected) && o.value)"
        ".map(o => o.parentElement.id + '=' + o.value)"
    )
    assert chosen == []
    assert count(page, "input[type=radio]:checked, input[type=checkbox]:checked") == 0
    assert count(page, "#result") == 0


def test_submitting_the_empty_form_names_every_missing_field(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    click_and_load(page, "button[type=submit]")
    summary = page.locator("[role=alert] li").all_text_contents()
    assert [item.strip() for item in summary] == [f"{spec.label} is required" for spec in schema.FIELDS]
    assert text(page, "#smoker-error") == "Error: Smoker is required"
    assert count(page, "[aria-invalid=true]") == len(schema.FIELDS)
    assert count(page, "#result") == 0
    assert count(page, "#charges") == 0  # nothing predicted from defaults
    page.screenshot(path=ARTIFACTS / "form-empty-errors.png", full_page=True)


def _range_labels_inside(page: Page) -> bool:
    """Every label of the range chart lies within the chart's width (none cut off at an edge)."""
    return bool(
        page.evaluate(
            "() => { const box = document.getElementById('range').getBoundingClientRect();"
            " return [...document.querySelectorAll('#range text')].every(t => {"
            " const r = t.getBoundingClientRect(); return r.left >= box.left - 1 && r.right <= box.right + 1; }); }"
        )
    )


def _range_labels_apart(page: Page) -> bool:
    """No two labels of the range chart overlap."""
    return bool(
        page.evaluate(
            "() => { const rs = [...document.querySelectorAll('#range text')].map(t => t.getBoundingClientRect());"
            " return rs.every((a, i) => rs.every((b, j) => j <= i || a.right <= b.left || b.right <= a.left"
            " || a.bottom <= b.top || b.bottom <= a.top)); }"
        )
    )


def _range_chart_reads(page: Page) -> None:
    assert page.locator("#range").is_visible()
    assert _range_labels_inside(page)
    assert _range_labels_apart(page)


def test_submitting_explains_the_forecast_in_words(page: Page, base_url: str, model: Artifact) -> None:
    submit(page, base_url, PATIENT)
    result = predict.form_result(model, schema.encode_record(PATIENT))
    assert text(page, "#charges") == dollars(result.charges)
    assert text(page, "#expected") == f"Expected cost (what to budget): {dollars(result.charges)}"
    assert text(page, "#interval") == (
        f"9 in 10 patients like this cost between {dollars(result.low)} and {dollars(result.high)}; "
        f"half cost less than {dollars(result.median)}."
    )
    assert text(page, "#baseline").startswith(f"Compared with {REFERENCE} (expected cost {dollars(model.baseline)})")
    assert "typical" not in text(page, "#result").lower()
    _range_chart_reads(page)
    assert count(page, "#range rect.band") == count(page, "#range line.median") == 1
    assert count(page, "#range circle.mean") == 1
    assert count(page, "svg.chart rect.bar") == len(schema.FIELDS)
    assert count(page, "svg.chart rect.bar.positive[data-feature=smoker]") == 1  # smoking raises charges
    assert "Smoker: yes" in text(page, "svg.chart g[data-feature=smoker]")
    for name, typed in PATIENT.items():  # the form keeps what was typed
        assert value(page, name) == typed
    # the result sits beside the form on a desktop screen
    beside = page.evaluate(
        "() => document.getElementById('result').getBoundingClientRect().left"
        " > document.querySelector('form').getBoundingClientRect().right"
    )
    assert beside is True
    page.screenshot(path=ARTIFACTS / "form.png", full_page=True)


def test_out_of_range_age_is_reported_next_to_the_field(page: Page, base_url: str) -> None:
    submit(page, base_url, PATIENT | {"age": "150"})
    age = page.locator("#age")
    assert text(page, "#age-error") == "Error: Age must be a whole number from 18 to 100"
    assert age.get_attribute("aria-invalid") == "true"
    assert "age-error" in (age.get_attribute("aria-describedby") or "")
    assert text(page, "[role=alert] a[href='#age']") == "Age must be a whole number from 18 to 100"
    assert value(page, "age") == "150"
    assert page.title().startswith("Error: ")
    assert count(page, "[aria-invalid]") == 1
    assert count(page, "#result") == 0
    page.screenshot(path=ARTIFACTS / "form-error.png", full_page=True)


def test_keyboard_focus_is_visible(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    page.focus("#children")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "smoker"
    style = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert style[0] == "solid"
    assert style[1] >= 2


def _no_sideways_scrolling(page: Page) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))


@pytest.mark.parametrize("width", [390, 360])
def test_phone_layout_is_one_column_with_large_targets(
    screen: Callable[..., Page], base_url: str, model: Artifact, width: int
) -> None:
    page = screen(width, 844, mobile=True, scale=2)
    submit(page, base_url, PATIENT)
    assert text(page, "#charges") == dollars(model.predict_record(PATIENT).charges)
    assert _no_sideways_scrolling(page)
    _range_chart_reads(page)
    assert page.evaluate("() => window.innerWidth") == width  # <meta name=viewport> took effect
    # one column, answer first: the result is above the form, not beside it
    assert page.evaluate(
        "() => document.getElementById('result').getBoundingClientRect().bottom"
        " <= document.querySelector('form').getBoundingClientRect().top"
    )
    heights = page.evaluate(
        "() => [...document.querySelectorAll('input, select, button')].map(e => e.getBoundingClientRect().height)"
    )
    assert min(heights) >= 44, heights  # WCAG 2.5.5 / platform guidance: 44 px touch targets
    page.screenshot(path=ARTIFACTS / f"form-mobile-{width}.png", full_page=True)


@pytest.mark.parametrize(
    "record",
    [
        {"age": "100", "sex": "male", "bmi": "80", "children": "10", "smoker": "yes", "region": "southeast"},
        {"age": "23", "sex": "female", "bmi": "24.5", "children": "0", "smoker": "no", "region": "southwest"},
    ],
    ids=["six-figures", "young-non-smoker"],
)
def test_range_chart_reads_on_a_phone_at_the_extremes(
    screen: Callable[..., Page], base_url: str, record: dict[str, str]
) -> None:
    """Six-figure tick labels, and markers bunched at the axis's left end, still fit at 360 px."""
    page = screen(360, 800, mobile=True, scale=2)
    submit(page, base_url, record)
    _range_chart_reads(page)
    assert _no_sideways_scrolling(page)
    page.screenshot(path=ARTIFACTS / f"form-range-360-{record['age']}.png", full_page=True)


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_pages_own_stylesheet_passes_its_policy_and_nothing_else_does(page: Page, base_url: str, path: str) -> None:
    """Chromium enforces the Content-Security-Policy: the served <style> (allowed by its hash)
    applies, while a stylesheet or script added to the page afterwards is blocked."""
    page.goto(base_url + path)
    assert page.evaluate("() => getComputedStyle(document.body).marginTop") != "8px"  # the UA default, unstyled
    blocked = page.evaluate(
        "() => { const s = document.createElement('style'); s.textContent = 'body{margin-top:77px}';"
        " document.head.appendChild(s);"
        " const j = document.createElement('script'); j.textContent = 'document.body.dataset.ran = 1';"
        " document.head.appendChild(j);"
        " return [getComputedStyle(document.body).marginTop, document.body.dataset.ran || null]; }"
    )
    assert blocked == ["0px", None]
