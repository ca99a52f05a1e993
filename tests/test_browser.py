"""The form in a real browser: type, submit, read the answer, see the errors, on desktop and phone.

Until the real web routes land, a minimal Starlette app in this file stands in for them:
it does exactly what the page's contract needs (GET renders, POST validates with the
schema, predicts and explains). Set ``CHARGECAST_BASE_URL`` to drive a running service
instead. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from browser import CHROMIUM, Browser
from chargecast import schema
from chargecast.artifact import Artifact
from chargecast.form import FormResult, dollars, render_page

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


def make_app(model: Artifact) -> Starlette:
    """The routes the form expects, and nothing else."""

    async def page(request: Request) -> HTMLResponse:
        if request.method == "GET":
            return HTMLResponse(render_page(values={}, errors={}, result=None, model=model))
        # request.form() needs python-multipart even for urlencoded bodies; parse_qs does not.
        body = (await request.body()).decode("utf-8", errors="replace")
        values = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        encoded, issues = schema.validate_record(values)
        if issues:
            errors: dict[str, str] = {}
            for issue in issues:
                spec = schema.FIELD_BY_NAME.get(issue.field)
                errors.setdefault(issue.field, f"{spec.label if spec else issue.field} {issue.rule}")
            return HTMLResponse(render_page(values=values, errors=errors, result=None, model=model), 422)
        prediction = model.predict_record(values)
        contributions = model.explain(np.array([encoded]))[0]
        result = FormResult(
            charges=prediction.charges,
            low=prediction.low,
            high=prediction.high,
            level=model.level,
            contributions={name: float(c) for name, c in zip(schema.FEATURES, contributions, strict=True)},
            baseline=model.baseline,
        )
        return HTMLResponse(render_page(values=values, errors={}, result=result, model=model))

    return Starlette(routes=[Route("/", page, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def base_url(model: Artifact) -> Iterator[str]:
    """The stand-in app served by uvicorn on a free local port, in a thread."""
    if url := os.environ.get("CHARGECAST_BASE_URL"):
        yield url.rstrip("/")
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(model), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
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


def test_empty_form_shows_the_example_patient(browser: Browser, base_url: str) -> None:
    browser.open(base_url + "/")
    assert browser.text("h1") == "Estimate a patient's medical charges"
    for spec in schema.FIELDS:
        shown = browser.evaluate(f"document.getElementById('{spec.name}').value")
        example = spec.example if isinstance(spec, schema.CategoryField) else f"{spec.example:g}"
        assert shown == example, spec.name
    assert browser.count("#result") == 0


def test_submitting_shows_charges_interval_and_explanation(browser: Browser, base_url: str, model: Artifact) -> None:
    submit(browser, base_url, PATIENT)
    expected = model.predict_record(PATIENT)
    assert browser.text("#charges") == dollars(expected.charges)
    assert browser.text("#interval") == f"90% interval: {dollars(expected.low)} – {dollars(expected.high)}"
    assert browser.text("#baseline") == f"A typical patient: {dollars(model.baseline)}"
    assert browser.count("svg.chart rect.bar") == len(schema.FIELDS)
    assert browser.count("svg.chart rect.bar.positive[data-feature=smoker]") == 1  # smoking raises charges
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
        if width == 390:
            browser.screenshot(ARTIFACTS / "form-mobile.png")
    finally:
        browser.reset_viewport()
