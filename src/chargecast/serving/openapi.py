"""The OpenAPI 3.1 document, built from the schema, and a self-contained page that shows it.

The record's types, ranges and choices come from ``schema.FIELDS``, so the document cannot
drift from what the service validates. Every route, request body, response and the one
error shape are described; the property-based test (tests/test_openapi.py) holds the
running app to it. ``/docs`` is rendered here, server-side, from the same dict: no
JavaScript and nothing fetched from a CDN.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Final

import orjson

import chargecast
from chargecast.monitor.actuals import MAX_ACTUALS, MAX_ROW, REQUEST_ID
from chargecast.schema import FEATURES, FIELDS, PATIENT_REF_MAX_CHARS, CategoryField, NumberField
from chargecast.serving.csvroute import OUTPUT_COLUMNS
from chargecast.serving.predict import EXAMPLE_RECORD, MAX_QUANTILE_CELLS, MAX_RECORDS
from chargecast.serving.request import LEVELS_RULE, MAX_LEVELS
from chargecast.settings import Settings

JSON: Final = "application/json"
HTML: Final = "text/html"
REF: Final = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def record_schema(*, strict: bool = True) -> dict[str, Any]:
    """One patient record. ``strict``: JSON (typed, no unknown fields); else a form (strings)."""
    properties: dict[str, Any] = {}
    for spec in FIELDS:
        if isinstance(spec, NumberField):
            prop: dict[str, Any] = {
                "type": "integer" if spec.integer else "number",
                "minimum": spec.minimum,
                "maximum": spec.maximum,
            }
            rule = spec.rule
        else:
            assert isinstance(spec, CategoryField)
            prop = {"type": "string", "enum": list(spec.choices)}
            rule = spec.rule + " (matched ignoring case and surrounding spaces)"
        prop |= {"title": spec.label, "description": f"{spec.help} Rule: {rule}.", "examples": [spec.example]}
        properties[spec.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(FEATURES),
        "properties": properties,
        "examples": [EXAMPLE_RECORD],
    }
    if strict:
        schema["additionalProperties"] = False
        schema["description"] = (
            "One patient at admission. All six fields are required; unknown fields are refused, and so is a field "
            "given twice (JSON parsers disagree on which one counts)."
        )
    else:
        schema["description"] = "The form's fields, sent as text; other fields (a submit button) are ignored."
    return schema


# -- components ---------------------------------------------------------------------------
def _number() -> dict[str, Any]:
    return {"type": "number"}


def _version() -> dict[str, Any]:
    return {"type": "string", "description": "The model artifact's version."}


def _interval() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The prediction interval: charges fall in [low, high] with probability `level`.",
        "required": ["low", "high", "level"],
        "properties": {
            "low": _number(),
            "high": _number(),
            "level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "examples": [0.9]},
        },
        "additionalProperties": False,
    }


def _quantiles() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Only with ?quantiles=: the forecast quantile at each level asked for, in USD, keyed by the "
        "level's canonical name (the shortest decimal that reads back as the same number, no exponent: 0.50 is "
        "'0.5', 1e-3 is '0.001'), in ascending order of level. Values never decrease with the level, are never "
        "below 0, and the quantiles at (1 - level)/2 and (1 + level)/2 are the interval's low and high.",
        "propertyNames": {"pattern": "^0\\.[0-9]*[1-9]$"},
        "additionalProperties": {"type": "number", "minimum": 0},
        "examples": [{"0.05": 4100.5, "0.5": 6050.0, "0.95": 14950.25}],
    }


def _total() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A book of patients: the sum of their expected charges and an interval for the sum of what "
        "they will actually cost (equal-tailed, at the model's level). The interval is much narrower than the sum "
        "of the patients' intervals: their deviations partly cancel.",
        "required": ["charges", "interval"],
        "properties": {
            "charges": {"type": "number", "description": "Sum of expected charges in USD."},
            "interval": _ref("Interval"),
        },
        "additionalProperties": False,
    }


def _contributions() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Per-input contributions in USD; they sum to charges minus baseline.",
        "required": list(FEATURES),
        "properties": {name: _number() for name in FEATURES},
        "additionalProperties": False,
    }


def _prediction_properties() -> dict[str, Any]:
    return {
        "charges": {"type": "number", "description": "Expected (mean) charges in USD."},
        "interval": _ref("Interval"),
        "quantiles": _ref("Quantiles"),
        "contributions": _ref("Contributions"),
        "baseline": {"type": "number", "description": "The average prediction that contributions start from."},
        "extrapolated": {
            "type": "array",
            "items": {"type": "string", "enum": [f.name for f in FIELDS if isinstance(f, NumberField)]},
            "minItems": 1,
            "description": "Present only when inputs lie outside the training data's range (see training_ranges "
            "in /api/v1/model): the forecast extrapolates and the interval's coverage was not measured there.",
        },
    }


def _forecasts() -> dict[str, Any]:
    """What the JSON prediction routes answer: one record's forecast, a batch's, a CSV's total."""
    properties = _prediction_properties()
    return {
        "Prediction": {
            "type": "object",
            "required": ["charges", "interval"],
            "properties": properties,
            "additionalProperties": False,
        },
        "PredictionResponse": {
            "type": "object",
            "description": "One record's forecast; contributions and baseline only with ?explain=true.",
            "required": ["charges", "interval", "model_version"],
            "properties": properties | {"model_version": _version()},
            "additionalProperties": False,
        },
        "BatchResponse": {
            "type": "object",
            "description": "Forecasts in the order the records were sent, and their total.",
            "required": ["predictions", "total", "model_version"],
            "properties": {
                "predictions": {"type": "array", "items": _ref("Prediction")},
                "total": _ref("Total"),
                "model_version": _version(),
            },
            "additionalProperties": False,
        },
        "BookSummary": {
            "type": "object",
            "description": "A CSV's row count and its total; the same numbers, byte for byte, as "
            "'chargecast predict FILE --summary PATH.json' writes for the file.",
            "required": ["rows", "total"],
            "properties": {"rows": {"type": "integer", "minimum": 1}, "total": _ref("Total")},
            "additionalProperties": False,
        },
    }


def _service_states() -> dict[str, Any]:
    """What the model, health and readiness routes answer."""
    return {
        "ModelInfo": {
            "type": "object",
            "description": "The artifact metadata: version, metrics, input schema, interval level, training facts.",
            "required": ["version", "interval_level", "schema"],
            "properties": {
                "version": _version(),
                "interval_level": {"type": "number"},
                "schema": {"type": "array", "items": {"type": "object"}},
                "metrics": {"type": "object"},
            },
            "additionalProperties": True,
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
            "additionalProperties": False,
        },
        "Ready": {
            "type": "object",
            "required": ["status", "model_version"],
            "properties": {"status": {"const": "ready"}, "model_version": _version()},
            "additionalProperties": False,
        },
    }


def _issue() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["field", "rule"],
        "properties": {
            "field": {
                "type": "string",
                "description": "The field ('age'), with its index in a list ('[3].age'); a CSV column name; "
                "'body', a header name or '(row)' for problems that are not one field's.",
            },
            "rule": {"type": "string", "description": "The rule that was broken, in words."},
            "value": {"description": "The offending value (long text is cut)."},
            "line": {
                "type": "integer",
                "minimum": 1,
                "description": "CSV line where the record starts (the header is line 1; quoted newlines count).",
            },
        },
        "additionalProperties": False,
    }


def _error() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every error, from every route but the HTML form (which shows errors inline).",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message", "issues"],
                "properties": {
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "message": {"type": "string"},
                    "issues": {"type": "array", "items": _ref("Issue")},
                },
                "additionalProperties": False,
            }
        },
        "additionalProperties": False,
    }


def components() -> dict[str, Any]:
    """Every schema the document names, in the order /docs lists them."""
    forecasts = _forecasts()
    return {
        "PatientRecord": record_schema(),
        "PatientBatch": {
            "type": "array",
            "items": _ref("PatientRecord"),
            "minItems": 1,
            "maxItems": MAX_RECORDS,
            "description": f"1 to {MAX_RECORDS} records; bigger batches go to /api/v1/predict/csv.",
        },
        "FormRecord": record_schema(strict=False),
        "Interval": _interval(),
        "Quantiles": _quantiles(),
        "Total": _total(),
        "Contributions": _contributions(),
        **forecasts,
        **_service_states(),
        "Issue": _issue(),
        "Error": _error(),
    }


_REASONS: Final[dict[int | str, str]] = {
    400: "The body cannot be read: empty, not valid JSON (NaN and Infinity included), not UTF-8, malformed.",
    401: "No valid API key: send 'Authorization: Bearer <key>'.",
    413: "The body is over the size limit (or a CSV over the row limit).",
    415: "The Content-Type is not one this route takes.",
    422: "The body (or a query parameter) breaks the schema; each issue names the field (with its index in a "
    "list, or its CSV row) and the rule. A key twice in one JSON object, or a query parameter given twice, is a "
    "422 too, naming it.",
    408: "The CSV upload did not arrive within the upload deadline.",
    503: "The model is not loaded yet (or failed to load), or every CSV slot is busy; retry after the "
    "Retry-After seconds.",
    "default": "Any other error (404 unknown route, 405 wrong method, 500 a bug) in the same Error shape.",
}
_REQUEST_ID: Final = {
    "description": "The request's id (the client's X-Request-ID if it sent a valid one), also in the access log.",
    "schema": {"type": "string"},
}
_AUDIT_ID: Final = {
    "description": (
        "Only while the audit log is on (CHARGECAST_AUDIT_URL): the id the server minted for this request, "
        "the request_id of its audit records, unique even when clients reuse their X-Request-IDs. Send it, "
        "with the row, to POST /api/v1/actuals to join the actual charges to this forecast."
    ),
    "schema": {"type": "string", "pattern": "^[0-9a-f]{16}-[0-9a-f]+$"},
}
HEADERS: Final = {"X-Request-ID": _REQUEST_ID, "X-Audit-Request-ID": _AUDIT_ID}


def _response(description: str, media: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS},
        "content": {media: {"schema": schema if schema is not None else {"type": "string"}}},
    }


def _errors(codes: tuple[int, ...], media: str = JSON) -> dict[str, Any]:
    schema = _ref("Error") if media == JSON else {"type": "string"}
    keys: tuple[int | str, ...] = (*codes, "default")
    return {str(code): _response(_REASONS[code], media, schema) for code in keys}


# -- paths ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Operations:
    """What every operation's description depends on: whether API keys are set, and the limits."""

    keyed: bool
    limit: str  # the JSON and form body limit, in words
    csv_limits: str

    @classmethod
    def of(cls, settings: Settings) -> _Operations:
        csv_limits = f"Limits: {settings.csv_max_rows:,} rows, {settings.csv_max_bytes:,} bytes."
        return cls(bool(settings.api_keys), f"{settings.max_body_bytes:,} bytes", csv_limits)

    @property
    def api_errors(self) -> tuple[int, ...]:
        return (400, 401, 413, 415, 422, 503) if self.keyed else (400, 413, 415, 422, 503)

    def op(
        self, summary: str, description: str, responses: dict[str, Any], *, auth: bool, **extra: Any
    ) -> dict[str, Any]:
        """One operation; with keys set, each says whether it needs one (``security: []`` when not)."""
        out: dict[str, Any] = {"summary": summary, "description": description, **extra, "responses": responses}
        if self.keyed:
            out["security"] = [{"bearerAuth": []}] if auth else []
        return out


FORM_KEY: Final = (
    " With API keys set, the form needs one too, like every route that returns a forecast; a browser cannot "
    "send the header from a form, so serve it behind a proxy that adds it (an identity-aware proxy)."
)


def _form_paths(ops: _Operations) -> dict[str, Any]:
    """``/`` and ``/predict``: the HTML form, which answers pages, errors included."""
    form_key = FORM_KEY if ops.keyed else ""
    form_errors = (400, 401, 413, 415, 503) if ops.keyed else (400, 413, 415, 503)
    form_body = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": _ref("FormRecord")},
            "multipart/form-data": {"schema": _ref("FormRecord")},
        },
    }
    form_post = ops.op(
        "Submit the form",
        "Validates on the server; answers the page with each problem next to its field (422), or with the "
        f"forecast, its prediction interval and the explanation (200). Bodies over {ops.limit} get 413." + form_key,
        {
            "200": _response("The page with the forecast.", HTML),
            "422": _response("The page with each problem next to its field.", HTML),
            **_errors(form_errors, HTML),
        },
        auth=True,
        requestBody=form_body,
    )
    return {
        "/": {
            "get": ops.op(
                "The web form",
                "An HTML page to forecast one patient's charges." + form_key,
                {"200": _response("The form.", HTML), **_errors((401, 503) if ops.keyed else (503,), HTML)},
                auth=True,
            ),
            "post": form_post | {"operationId": "submitForm"},
        },
        "/predict": {
            "post": form_post | {"operationId": "submitFormTutorial", "summary": "Submit the form (tutorial)"}
        },
    }


def _predict_parameters() -> list[dict[str, Any]]:
    """``?explain=`` and ``?quantiles=`` of /api/v1/predict."""
    explain = {
        "name": "explain",
        "in": "query",
        "required": False,
        "description": "Add each input's contribution and the baseline to every prediction. Given at most once: "
        "explain=true&explain=false is a 422, not a silent choice.",
        "schema": {"type": "boolean", "default": False},
    }
    quantiles = {
        "name": "quantiles",
        "in": "query",
        "required": False,
        "description": "Add the forecast quantiles at these levels to every prediction, e.g. 0.05,0.5,0.95. The "
        f"value {LEVELS_RULE.removeprefix('must be ')} (levels are compared as read, so 0.5 and 0.50 repeat; "
        "spaces around items are ignored). Anything else, or the parameter twice, is a 422 naming 'quantiles' and "
        f"the rule. A list of records times the levels may hold at most {MAX_QUANTILE_CELLS:,} quantiles.",
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "minItems": 1,
            "maxItems": MAX_LEVELS,
            "uniqueItems": True,
        },
    }
    return [explain, quantiles]


def _json_paths(ops: _Operations) -> dict[str, Any]:
    """``/predict_api`` (the tutorial's bare number) and ``/api/v1/predict`` (records and batches)."""
    record_body = {"required": True, "content": {JSON: {"schema": _ref("PatientRecord")}}}
    forecasts = {"oneOf": [_ref("PredictionResponse"), _ref("BatchResponse")]}
    return {
        "/predict_api": {
            "post": ops.op(
                "One record in, a bare number out (tutorial)",
                "The tutorial's route: a JSON object with the six fields in, the expected charges out.",
                {
                    "200": _response("Expected charges in USD.", JSON, {"type": "number"}),
                    **_errors(ops.api_errors),
                },
                auth=True,
                operationId="predictBare",
                requestBody=record_body,
            )
        },
        "/api/v1/predict": {
            "post": ops.op(
                "Forecast one record or a batch",
                f"A JSON object (one record) answers a PredictionResponse; an array of 1 to {MAX_RECORDS} records "
                "answers a BatchResponse in the same order, with the total of the book. charges is the expected "
                "(mean) charge; ?quantiles= adds the forecast distribution's quantiles, ?explain=true the "
                f"contributions (both may be combined). Bodies over {ops.limit} get 413.",
                {"200": _response("The forecast(s).", JSON, forecasts), **_errors(ops.api_errors)},
                auth=True,
                operationId="predict",
                parameters=_predict_parameters(),
                requestBody={
                    "required": True,
                    "content": {JSON: {"schema": {"oneOf": [_ref("PatientRecord"), _ref("PatientBatch")]}}},
                },
            )
        },
    }


def _csv_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            # application/csv and application/vnd.ms-excel are accepted too (see the description)
            **{kind: {"schema": {"type": "string"}} for kind in ("text/csv", "text/plain")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }


def _csv_paths(ops: _Operations) -> dict[str, Any]:
    """``/api/v1/predict/csv`` (the file back with three columns) and its ``/summary`` (the total)."""
    return {
        "/api/v1/predict/csv": {
            "post": ops.op(
                "Forecast a CSV file",
                "A CSV with a header row holding the six input columns (any order, other columns pass through), "
                "as the body (text/csv; text/plain, application/csv and application/vnd.ms-excel are taken as CSV too) "
                "or as the multipart field 'file'. Answers the same rows with "
                f"{', '.join(OUTPUT_COLUMNS)} appended (rounded to cents), streamed. Any bad row makes one 422 "
                "listing row, column and rule. A streamed answer has no room for the book's total: send the same "
                f"file to /api/v1/predict/csv/summary for it. {ops.csv_limits}",
                {
                    "200": _response("The CSV with three more columns.", "text/csv", {"type": "string"}),
                    **_errors((*ops.api_errors, 408)),
                },
                auth=True,
                operationId="predictCsv",
                requestBody=_csv_body(),
            )
        },
        "/api/v1/predict/csv/summary": {
            "post": ops.op(
                "Total of a CSV file",
                "The same input, rules and limits as /api/v1/predict/csv; answers the number of rows and the "
                "book's total (sum of expected charges, with an interval for the sum of actual charges) as JSON, "
                "byte for byte what 'chargecast predict FILE --summary PATH.json' writes for the same file. "
                + ops.csv_limits,
                {
                    "200": _response("The row count and the total.", JSON, _ref("BookSummary")),
                    **_errors((*ops.api_errors, 408)),
                },
                auth=True,
                operationId="predictCsvSummary",
                requestBody=_csv_body(),
            )
        },
    }


def _actual() -> dict[str, Any]:
    """One actual: by request_id and row, or by patient_ref alone."""
    charges = {"type": "number", "minimum": 0, "description": "What the stay actually cost, USD."}
    by_id = {
        "type": "object",
        "title": "By request id",
        "description": (
            "request_id is the forecasting response's X-Audit-Request-ID header; row is 0 for one record, "
            "the index in a list, or the CSV data row (from 0)."
        ),
        "properties": {
            "request_id": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
            "row": {"type": "integer", "minimum": 0, "maximum": MAX_ROW},
            "charges": charges,
        },
        "required": ["request_id", "row", "charges"],
        "additionalProperties": False,
    }
    by_patient = {
        "type": "object",
        "title": "By patient",
        "description": (
            "The patient_ref sent with the forecast: the latest forecast for it (needs "
            "CHARGECAST_AUDIT_PATIENT_KEY on the server; one that matches no forecast is a 422)."
        ),
        "properties": {
            "patient_ref": {"type": "string", "minLength": 1, "maxLength": PATIENT_REF_MAX_CHARS},
            "charges": charges,
        },
        "required": ["patient_ref", "charges"],
        "additionalProperties": False,
    }
    return {"oneOf": [by_id, by_patient]}


def _actuals_paths(ops: _Operations) -> dict[str, Any]:
    """Actual charges for logged forecasts (docs/monitoring.md)."""
    answer = {
        "type": "object",
        "properties": {"added": {"type": "integer"}, "known": {"type": "integer"}},
        "required": ["added", "known"],
    }
    one = _actual()
    many = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_ACTUALS}
    return {
        "/api/v1/actuals": {
            "post": ops.op(
                "Report actual charges",
                f"One actual or a list of up to {MAX_ACTUALS:,}, taken whole or not at all. Idempotent on "
                "(request_id, row): a repeat adds nothing (the first value wins). An unknown request_id is "
                "stored (its forecast may still be on its way to the log); an unknown patient_ref is a 422. "
                "503 when the audit log is off or its store is unavailable (retry: a repeat is never counted "
                f"twice). Body limit: {ops.limit}.",
                {"200": _response("How many were new and how many already known.", JSON, answer)}
                | _errors(ops.api_errors),
                auth=True,
                operationId="actuals",
                requestBody={"required": True, "content": {JSON: {"schema": {"oneOf": [one, many]}}}},
            )
        }
    }


def _service_paths(ops: _Operations) -> dict[str, Any]:
    """The model's metadata (keyed), then health, readiness and these documents (open)."""
    model_errors = (401, 422, 503) if ops.keyed else (422, 503)
    return {
        "/api/v1/model": {
            "get": ops.op(
                "The model's metadata",
                "Version, metrics, input schema, interval level and training facts of the served artifact.",
                {"200": _response("The metadata.", JSON, _ref("ModelInfo")), **_errors(model_errors)},
                auth=True,
                operationId="model",
            )
        },
        "/healthz": {
            "get": ops.op(
                "Liveness",
                "200 whenever the process serves; it checks nothing else.",
                {"200": _response("Alive.", JSON, _ref("Health"))},
                auth=False,
                operationId="healthz",
            )
        },
        "/readyz": {
            "get": ops.op(
                "Readiness",
                "200 once the model is loaded and a warm-up prediction succeeded; 503 before.",
                {"200": _response("Ready.", JSON, _ref("Ready")), **_errors((503,))},
                auth=False,
                operationId="readyz",
            )
        },
        "/openapi.json": {
            "get": ops.op(
                "This document",
                "The OpenAPI description of the service.",
                {"200": _response("OpenAPI 3.1.", JSON, {"type": "object"})},
                auth=False,
                operationId="openapi",
            )
        },
        "/docs": {
            "get": ops.op(
                "Readable API documentation",
                "This document as an HTML page.",
                {"200": _response("The page.", HTML)},
                auth=False,
                operationId="docs",
            )
        },
    }


DESCRIPTION: Final = (
    "Forecast a patient's medical charges at admission, with a calibrated interval and an "
    "explanation. Errors always have the shape of the Error schema. JSON bodies are read strictly: a key "
    "given twice in one object is a 422 naming it (with its list index), never last-wins. Every answer says "
    "Cache-Control: no-store (forecasts and errors carry patient data) and X-Content-Type-Options: nosniff, "
    "and is never to be framed; the HTML pages also carry a Content-Security-Policy that runs no script and "
    "fetches nothing. With API keys set, every route that returns a forecast or the model's details needs "
    "one, the form included; health, readiness and these documents stay open. Metrics are not served on "
    "this port (see CHARGECAST_METRICS_PORT)."
)


def build(settings: Settings) -> dict[str, Any]:
    """The whole document; security appears only when API keys are configured."""
    ops = _Operations.of(settings)
    paths = _form_paths(ops) | _json_paths(ops) | _csv_paths(ops) | _actuals_paths(ops) | _service_paths(ops)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "chargecast", "version": chargecast.__version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": components(), "headers": dict(HEADERS)},
    }
    if ops.keyed:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "One of CHARGECAST_API_KEYS."}
        }
    return document


def to_json(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


# -- /docs ------------------------------------------------------------------------------
_CSS: Final = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#1d1d1f}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;margin-top:2.5rem}code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f8fa;padding:.75rem;overflow:auto;border-radius:4px}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:0 1rem 1rem}
.m{display:inline-block;min-width:4rem;font-weight:700;text-transform:uppercase}
.get{color:#0a7d32}.post{color:#0b57d0}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
nav a{margin-right:1rem}
"""


def _schema_text(schema: Any) -> str:
    """A schema as indented JSON, with each $ref turned into a link to its definition."""
    text = escape(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())
    for name in _SCHEMA_NAMES:
        text = text.replace(f"&quot;{REF}{name}&quot;", f'&quot;<a href="#schema-{name}">{REF}{name}</a>&quot;')
    return text


_SCHEMA_NAMES: Final = tuple(components())


def _fields_table() -> str:
    rows = []
    for spec in FIELDS:
        if isinstance(spec, NumberField):
            kind = "integer" if spec.integer else "number"
            allowed = f"{spec.minimum:g} to {spec.maximum:g}"
        else:
            assert isinstance(spec, CategoryField)
            kind, allowed = "string", ", ".join(spec.choices)
        rows.append(
            f"<tr><td><code>{escape(spec.name)}</code></td><td>{escape(spec.label)}</td><td>{kind}</td>"
            f"<td>{escape(allowed)}</td><td>{escape(spec.help)}</td></tr>"
        )
    return (
        "<table><tr><th>field</th><th>label</th><th>type</th><th>allowed</th><th>meaning</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_docs(document: dict[str, Any]) -> str:
    """The document as one HTML page: operations, parameters, bodies, responses, schemas."""
    out = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(document['info']['title'])} API</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(document['info']['title'])} API <small>{escape(document['info']['version'])}</small></h1>",
        f"<p>{escape(document['info']['description'])}</p>",
        '<nav><a href="#routes">Routes</a><a href="#record">The record</a><a href="#schemas">Schemas</a>'
        '<a href="/openapi.json">openapi.json</a></nav>',
    ]
    schemes = document.get("components", {}).get("securitySchemes")
    if schemes:
        out.append(
            "<p><strong>Authentication:</strong> routes marked 🔒 need <code>Authorization: Bearer "
            "&lt;key&gt;</code>.</p>"
        )
    out.append('<h2 id="routes">Routes</h2>')
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            lock = " 🔒" if op.get("security") else ""
            out.append(
                f'<section class="op" id="op-{escape(op.get("operationId", method + path))}">'
                f'<h3><span class="m {method}">{method}</span> <code>{escape(path)}</code>{lock} — '
                f"{escape(op['summary'])}</h3><p>{escape(op['description'])}</p>"
            )
            if op.get("parameters"):
                out.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>schema</th><th>meaning</th></tr>")
                for p in op["parameters"]:
                    out.append(
                        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                        f"<td><code>{escape(orjson.dumps(p['schema']).decode())}</code></td>"
                        f"<td>{escape(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in op:
                out.append("<h4>Request body</h4>")
                for media, content in op["requestBody"]["content"].items():
                    out.append(f"<p><code>{escape(media)}</code></p><pre>{_schema_text(content['schema'])}</pre>")
            out.append("<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
            for status, response in op["responses"].items():
                bodies = "<br>".join(
                    f"<code>{escape(media)}</code> {_schema_text(c['schema'])}"
                    for media, c in response.get("content", {}).items()
                )
                out.append(
                    f"<tr><td>{escape(status)}</td><td>{escape(response['description'])}</td><td>{bodies}</td></tr>"
                )
            out.append("</table></section>")
    out.append('<h2 id="record">The patient record</h2>' + _fields_table())
    out.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in document["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{escape(name)}">{escape(name)}</h3><pre>{_schema_text(schema)}</pre>')
    out.append("</body></html>")
    return "".join(out)
