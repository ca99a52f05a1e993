"""The form in a real browser: type, submit, read the answer, see the errors, on desktop and phone.

The real app runs in a thread under uvicorn; set ``CHARGECAST_BASE_URL`` to drive a
running service instead. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

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
from chargecast.app import create_app
from chargecast.artifact import Artifact
from chargecast.form import dollars
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
