"""The form in a real browser: type, submit, read the answer, see the errors, on desktop and phone.

The real app runs in a thread under uvicorn; set ``CHARGECAST_BASE_URL`` to drive a
running service instead. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from browser import CHROMIUM, Browser
from chargecast import schema
from chargecast.model.artifact import Artifact
from chargecast.serving import predict
from chargecast.serving.app import create_app
from chargecast.serving.form import REFERENCE, dollars
from chargecast.settings import Settings

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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Settings(model_dir=model_dir))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started or httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b


def submit(browser: Browser, base_url: str, record: dict[str, str]) -> None:
    browser.open(base_url + "/")
    for spec in schema.FIELDS:
        if isinstance(spec, schema.CategoryField):
            browser.select(f"#{spec.name}", record[spec.name])
        else:
            browser.fill(f"#{spec.name}", record[spec.name])
    browser.click("button[type=submit]")
    browser.wait_for_load()


def test_empty_form_starts_blank_with_nothing_chosen(browser: Browser, base_url: str) -> None:
    browser.open(base_url + "/")
    assert browser.text("h1") == "Estimate a patient's medical charges"
    for spec in schema.FIELDS:
        assert browser.evaluate(f"document.getElementById('{spec.name}').value") == "", spec.name
    # no real option is selected, by default or otherwise, and no radio is checked
    chosen = browser.evaluate(
        "[...document.querySelectorAll('option')].filter(o => (o.selected || o.defaultSelected) && o.value)"
        ".map(o => o.parentElement.id + '=' + o.value)"
    )
    assert chosen == []
    assert browser.count("input[type=radio]:checked, input[type=checkbox]:checked") == 0
    assert browser.count("#result") == 0


def test_submitting_the_empty_form_names_every_missing_field(browser: Browser, base_url: str) -> None:
    browser.open(base_url + "/")
    browser.click("button[type=submit]")
    browser.wait_for_load()
    summary = browser.evaluate("[...document.querySelectorAll('[role=alert] li')].map(li => li.textContent.trim())")
    assert summary == [f"{spec.label} is required" for spec in schema.FIELDS]
    assert browser.text("#smoker-error") == "Error: Smoker is required"
    assert browser.count("[aria-invalid=true]") == len(schema.FIELDS)
    assert browser.count("#result") == 0
    assert browser.count("#charges") == 0  # nothing predicted from defaults
    browser.screenshot(ARTIFACTS / "form-empty-errors.png")


def _visible(browser: Browser, selector: str) -> bool:
    return bool(
        browser.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return r.width > 0 && r.height > 0; })()"
        )
    )


def _range_labels_inside(browser: Browser) -> bool:
    """Every label of the range chart lies within the chart's width (none cut off at an edge)."""
    return bool(
        browser.evaluate(
            "(() => { const box = document.getElementById('range').getBoundingClientRect();"
            " return [...document.querySelectorAll('#range text')].every(t => {"
            " const r = t.getBoundingClientRect(); return r.left >= box.left - 1 && r.right <= box.right + 1; }); })()"
        )
    )


def _range_labels_apart(browser: Browser) -> bool:
    """No two labels of the range chart overlap."""
    return bool(
        browser.evaluate(
            "(() => { const rs = [...document.querySelectorAll('#range text')].map(t => t.getBoundingClientRect());"
            " return rs.every((a, i) => rs.every((b, j) => j <= i || a.right <= b.left || b.right <= a.left"
            " || a.bottom <= b.top || b.bottom <= a.top)); })()"
        )
    )


def test_submitting_explains_the_forecast_in_words(browser: Browser, base_url: str, model: Artifact) -> None:
    submit(browser, base_url, PATIENT)
    result = predict.form_result(model, schema.encode_record(PATIENT))
    assert browser.text("#charges") == dollars(result.charges)
    assert browser.text("#expected") == f"Expected cost (what to budget): {dollars(result.charges)}"
    assert browser.text("#interval") == (
        f"9 in 10 patients like this cost between {dollars(result.low)} and {dollars(result.high)}; "
        f"half cost less than {dollars(result.median)}."
    )
    assert browser.text("#baseline").startswith(f"Compared with {REFERENCE} (expected cost {dollars(model.baseline)})")
    assert "typical" not in browser.text("#result").lower()
    assert _visible(browser, "#range")
    assert browser.count("#range rect.band") == browser.count("#range line.median") == 1
    assert browser.count("#range circle.mean") == 1
    assert _range_labels_inside(browser)
    assert _range_labels_apart(browser)
    assert browser.count("svg.chart rect.bar") == len(schema.FIELDS)
    assert browser.count("svg.chart rect.bar.positive[data-feature=smoker]") == 1  # smoking raises charges
    assert "Smoker: yes" in browser.text("svg.chart g[data-feature=smoker]")
    for name, value in PATIENT.items():  # the form keeps what was typed
        assert browser.evaluate(f"document.getElementById('{name}').value") == value
    # the result sits beside the form on a desktop screen
    beside = browser.evaluate(
        "document.getElementById('result').getBoundingClientRect().left"
        " > document.querySelector('form').getBoundingClientRect().right"
    )
    assert beside is True
    browser.screenshot(ARTIFACTS / "form.png")


def test_out_of_range_age_is_reported_next_to_the_field(browser: Browser, base_url: str) -> None:
    submit(browser, base_url, PATIENT | {"age": "150"})
    assert browser.text("#age-error") == "Error: Age must be a whole number from 18 to 100"
    assert browser.attribute("#age", "aria-invalid") == "true"
    assert "age-error" in (browser.attribute("#age", "aria-describedby") or "")
    assert browser.text("[role=alert] a[href='#age']") == "Age must be a whole number from 18 to 100"
    assert browser.evaluate("document.getElementById('age').value") == "150"
    assert browser.evaluate("document.title").startswith("Error: ")
    assert browser.count("[aria-invalid]") == 1
    assert browser.count("#result") == 0
    browser.screenshot(ARTIFACTS / "form-error.png")


def test_keyboard_focus_is_visible(browser: Browser, base_url: str) -> None:
    browser.open(base_url + "/")
    browser.evaluate("document.getElementById('children').focus()")
    browser.press("Tab")
    assert browser.evaluate("document.activeElement.id") == "smoker"
    style = browser.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()"
    )
    assert style[0] == "solid"
    assert style[1] >= 2


@pytest.mark.parametrize("width", [390, 360])
def test_phone_layout_is_one_column_with_large_targets(
    browser: Browser, base_url: str, model: Artifact, width: int
) -> None:
    browser.set_viewport(width, 844, mobile=True, scale=2)
    try:
        submit(browser, base_url, PATIENT)
        assert browser.text("#charges") == dollars(model.predict_record(PATIENT).charges)
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        assert _visible(browser, "#range")
        assert _range_labels_inside(browser)
        assert _range_labels_apart(browser)
        assert browser.evaluate("window.innerWidth") == width  # <meta name=viewport> took effect
        # one column, answer first: the result is above the form, not beside it
        assert browser.evaluate(
            "document.getElementById('result').getBoundingClientRect().bottom"
            " <= document.querySelector('form').getBoundingClientRect().top"
        )
        heights = browser.evaluate(
            "[...document.querySelectorAll('input, select, button')].map(e => e.getBoundingClientRect().height)"
        )
        assert min(heights) >= 44, heights  # WCAG 2.5.5 / platform guidance: 44 px touch targets
        browser.screenshot(ARTIFACTS / f"form-mobile-{width}.png")
    finally:
        browser.reset_viewport()


@pytest.mark.parametrize(
    "record",
    [
        {"age": "100", "sex": "male", "bmi": "80", "children": "10", "smoker": "yes", "region": "southeast"},
        {"age": "23", "sex": "female", "bmi": "24.5", "children": "0", "smoker": "no", "region": "southwest"},
    ],
    ids=["six-figures", "young-non-smoker"],
)
def test_range_chart_reads_on_a_phone_at_the_extremes(browser: Browser, base_url: str, record: dict[str, str]) -> None:
    """Six-figure tick labels, and markers bunched at the axis's left end, still fit at 360 px."""
    browser.set_viewport(360, 800, mobile=True, scale=2)
    try:
        submit(browser, base_url, record)
        assert _visible(browser, "#range")
        assert _range_labels_inside(browser)
        assert _range_labels_apart(browser)
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        browser.screenshot(ARTIFACTS / f"form-range-360-{record['age']}.png")
    finally:
        browser.reset_viewport()


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_pages_own_stylesheet_passes_its_policy_and_nothing_else_does(
    browser: Browser, base_url: str, path: str
) -> None:
    """Chromium enforces the Content-Security-Policy: the served <style> (allowed by its hash)
    applies, while a stylesheet or script added to the page afterwards is blocked."""
    browser.open(base_url + path)
    assert browser.evaluate("getComputedStyle(document.body).marginTop") != "8px"  # the UA default, unstyled
    blocked = browser.evaluate(
        "(() => { const s = document.createElement('style'); s.textContent = 'body{margin-top:77px}';"
        " document.head.appendChild(s);"
        " const j = document.createElement('script'); j.textContent = 'document.body.dataset.ran = 1';"
        " document.head.appendChild(j);"
        " return [getComputedStyle(document.body).marginTop, document.body.dataset.ran || null]; })()"
    )
    assert blocked == ["0px", None]
