"""The app against its own OpenAPI document: generated requests, no 5xx, conforming answers.

Schemathesis sends requests generated from the document (valid ones and deliberately
broken ones) to the ASGI app and checks each response against it: no server error, status
documented, content type, body schema and headers as described, invalid input refused,
and, with API keys on, that no documented-secure route answers without one. The run is
kept short (``MAX_EXAMPLES`` per operation) to fit the suite's time budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import checks
from schemathesis.generation.case import Case
from starlette.applications import Starlette

from chargecast.serving import openapi
from chargecast.serving.app import create_app
from chargecast.settings import Settings

MAX_EXAMPLES = 50
KEY = "test-key-0123456789"
# The document does not depend on the model, so it is built before the model exists
# (schemathesis collects operations at import time); the fixtures check the app serves it.
OPEN = Settings(log_level="warning")
KEYED = Settings(log_level="warning", api_keys=KEY)  # type: ignore[arg-type]  # the env form: a string
open_schema = schemathesis.openapi.from_dict(openapi.build(OPEN))
keyed_schema = schemathesis.openapi.from_dict(openapi.build(KEYED))
for loaded in (open_schema, keyed_schema):
    loaded.config.update(base_url="http://testserver")  # requests go to the ASGI app, never the network
    loaded.config.generation.update(max_examples=MAX_EXAMPLES)
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]  # too big is a rejection too

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _started(settings: Settings, model_dir: Path) -> Starlette:
    # The audit log on (SQLite), so POST /api/v1/actuals stores what it is sent: its documented
    # 200s and 422s are exercised, not a blanket 503. The document does not depend on it.
    audit = f"sqlite:///{model_dir.parent / f'audit-{id(settings)}.sqlite3'}"
    app = create_app(settings.model_copy(update={"model_dir": model_dir, "audit_url": audit}))
    # schemathesis runs the app's lifespan once per case, and the audit writer's thread starts
    # once; actuals need only their own store (serving/actuals.py), so the writer stays out.
    app.state.service.audit = None
    served = schemathesis.openapi.from_asgi("/openapi.json", app)  # also starts the app's lifespan
    assert served.raw_schema == openapi.build(settings)
    deadline = time.monotonic() + 30
    while app.state.service.model is None:  # the model loads in the background
        assert time.monotonic() < deadline, "model did not load"
        time.sleep(0.01)
    return app


@pytest.fixture(scope="module")
def open_app(model_dir: Path) -> Starlette:
    app = open_schema.app = _started(OPEN, model_dir)  # checks that send requests of their own need it too
    return app


@pytest.fixture(scope="module")
def keyed_app(model_dir: Path) -> Starlette:
    app = keyed_schema.app = _started(KEYED, model_dir)
    return app


@pytest.mark.parametrize(
    "settings",
    [OPEN, KEYED],
    ids=["open", "keyed"],
)
def test_the_document_is_valid_openapi_31(settings: Settings) -> None:
    schemathesis.openapi.from_dict(openapi.build(settings)).validate()  # against the OpenAPI 3.1 meta-schema


def _excluded(case: Case[Any]) -> list[Callable[..., Any]]:
    if case.operation.path in ("/api/v1/predict/csv", "/api/v1/predict/csv/summary"):
        # A CSV body is documented as a string: JSON Schema cannot say "CSV with these columns",
        # so most schema-valid strings are rightly refused (with a documented 4xx).
        return [checks.positive_data_acceptance]
    if case.operation.path == "/api/v1/actuals":
        # A schema-valid patient_ref may match no logged forecast (or the server may have no
        # patient key to look it up): a documented 422 the schema cannot express.
        return [checks.positive_data_acceptance]
    return []


@open_schema.parametrize()
def test_every_operation_conforms(case: Case[Any], open_app: Starlette) -> None:
    case.call_and_validate(app=open_app, excluded_checks=_excluded(case))


@keyed_schema.parametrize()
def test_every_operation_conforms_with_api_keys(case: Case[Any], keyed_app: Starlette) -> None:
    # schemathesis' own ignored_auth check re-sends through its network transport, which
    # cannot reach an in-process app; the same property is asserted directly below.
    excluded = [*_excluded(case), checks.ignored_auth]
    case.call_and_validate(app=keyed_app, headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=excluded)
    if case.operation.definition.raw.get("security") and case.method.upper() == case.operation.method.upper():
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}):
            response = case.call(app=keyed_app, headers=headers)
            assert response.status_code == 401, (case.operation.label, headers, response.text)
            assert response.headers.get("www-authenticate") == ['Bearer realm="chargecast"']
