"""Hostile clients (issue #8): keys on every forecasting route, headers, no paths, strict JSON.

Each test names the promise it holds: with API keys set no route hands out a forecast
without one (the form included); every answer says ``Cache-Control: no-store`` and
``nosniff``; pages get a script-free policy whose style hash matches what they serve; no
error shows a filesystem path; a JSON key twice in one object and a query parameter twice
are 422s naming them. The duplicate-key check is held to a slow reference on random JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.routing import Route
from starlette.testclient import TestClient

from chargecast.schema import MAX_REPORTED_ISSUES
from chargecast.serving import errors, headers, jsonbody, routes
from chargecast.serving import service as service_module
from chargecast.serving.app import create_app
from chargecast.settings import Settings

RECORD: dict[str, Any] = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
FORM = {k: str(v) for k, v in RECORD.items()}
KEY = "s3cret-key-0123456789"
CSV = "age,sex,bmi,children,smoker,region\n39,female,30.4,1,no,southeast\n"
JSON_TYPE = {"Content-Type": "application/json"}
CSV_TYPE = {"Content-Type": "text/csv"}
COMMON = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
# Every (method, path) that returns a forecast or the model's details; everything else is open.
FORECASTING = {
    ("POST", "/api/v1/predict"),
    ("POST", "/api/v1/predict/csv"),
    ("POST", "/api/v1/predict/csv/summary"),
    ("POST", "/predict_api"),
    ("GET", "/api/v1/model"),
    ("POST", "/api/v1/actuals"),  # actual charges name logged forecasts: keyed like them
    ("GET", "/"),
    ("POST", "/"),
    ("POST", "/predict"),
}
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json"), ("GET", "/docs")}


@pytest.fixture(scope="module")
def keyed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    audit = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'audit.sqlite3'}"  # so actuals are stored, not a 503
    settings_ = Settings(model_dir=model_dir, api_keys=KEY, log_level="warning", audit_url=audit)  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.01)
        yield client


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.01)
        yield c


def call(client: TestClient, method: str, path: str, auth: str | None = None) -> Any:
    """A valid request for the route, so only the key decides its answer."""
    headers = {"Authorization": auth} if auth else {}
    if method == "GET":
        return client.get(path, headers=headers)
    if path in ("/", "/predict"):
        return client.post(path, data=FORM, headers=headers)
    if path.startswith("/api/v1/predict/csv"):
        return client.post(path, content=CSV, headers=CSV_TYPE | headers)
    if path == "/api/v1/actuals":
        actual = {"request_id": "0123456789abcdef-1", "row": 0, "charges": 4321.0}
        return client.post(path, content=orjson.dumps(actual), headers=JSON_TYPE | headers)
    return client.post(path, content=orjson.dumps(RECORD), headers=JSON_TYPE | headers)


def error_issues(response: Any, status: int) -> list[dict[str, Any]]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["status"] == status
    return error["issues"]  # type: ignore[no-any-return]


def _requests(client: TestClient) -> Iterator[tuple[str, Any]]:
    """One answer of every kind: forecasts, pages, errors (with echoed values), operations."""
    body = orjson.dumps(RECORD)
    yield "predict", client.post("/api/v1/predict", content=body, headers=JSON_TYPE)
    yield "predict list", client.post("/api/v1/predict?explain=true", content=b"[" + body + b"]", headers=JSON_TYPE)
    yield "predict_api", client.post("/predict_api", content=body, headers=JSON_TYPE)
    yield "csv", client.post("/api/v1/predict/csv", content=CSV, headers=CSV_TYPE)
    yield "csv summary", client.post("/api/v1/predict/csv/summary", content=CSV, headers=CSV_TYPE)
    yield "form result", client.post("/", data=FORM)
    yield "form errors", client.post("/predict", data=FORM | {"age": "17"})
    yield "empty form", client.get("/")
    yield "422 echoing a value", client.post("/api/v1/predict", content=b'{"sex": "x"}', headers=JSON_TYPE)
    yield "422 csv row", client.post("/api/v1/predict/csv", content=CSV.replace("39", "17"), headers=CSV_TYPE)
    yield "400", client.post("/api/v1/predict", content=b"{", headers=JSON_TYPE)
    yield "404", client.get("/nope")
    yield "405", client.get("/api/v1/predict")
    yield "413", client.post("/api/v1/predict", content=b"[" + b" " * (2 << 20) + b"]", headers=JSON_TYPE)
    yield "415", client.post("/predict_api", content=body)
    yield "model", client.get("/api/v1/model")
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        yield path, client.get(path)


# -- API keys cover every forecasting route ---------------------------------------------
def test_every_route_is_either_keyed_or_open(keyed: TestClient) -> None:
    """A new route must be put in one of the two sets: forecasting routes are keyed."""
    routes = {(m, r.path) for r in keyed.app.routes if isinstance(r, Route) for m in (r.methods or set()) - {"HEAD"}}  # type: ignore[attr-defined]
    assert routes == FORECASTING | OPEN


@pytest.mark.parametrize(("method", "path"), sorted(FORECASTING))
def test_no_forecast_without_a_key(keyed: TestClient, model_dir: Path, method: str, path: str) -> None:
    for auth in (None, "Bearer wrong-key", f"Basic {KEY}", "Bearer"):
        response = call(keyed, method, path, auth)
        assert response.status_code == 401, (auth, response.text)
        assert response.headers["www-authenticate"] == 'Bearer realm="chargecast"'
        assert response.headers["cache-control"] == "no-store"
        if path in ("/", "/predict"):  # a short page: no form, no forecast, no model details
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert "API key" in response.text or "Authorization" in response.text
            assert "<form" not in response.text
            assert "$" not in response.text
            assert keyed.app.state.service.model.version not in response.text  # type: ignore[attr-defined]
        else:
            (issue,) = error_issues(response, 401)
            assert issue["field"] == "Authorization"
    granted = call(keyed, method, path, f"Bearer {KEY}")
    assert granted.status_code == 200, granted.text
    assert GRANTED[method, path] in granted.text


def test_the_key_is_checked_before_the_model_is_waited_for(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the model loads, a request without a key learns nothing, not even that: 401, not 503."""

    async def never_loads(self: service_module.Service) -> None:
        return None

    monkeypatch.setattr(service_module.Service, "load", never_loads)
    monkeypatch.setattr(service_module, "MODEL_WAIT_SECONDS", 0.05)
    settings_ = Settings(model_dir=model_dir, api_keys=KEY, log_level="warning")  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as loading:
        for method, path in sorted(FORECASTING):
            assert call(loading, method, path).status_code == 401, path
            waited = call(loading, method, path, f"Bearer {KEY}")
            assert waited.status_code == 503, path
            assert waited.headers["retry-after"] == "1"
            assert "still loading" in waited.text


GRANTED = {  # what each route answers with a key: a forecast, the form, or the model's details
    ("POST", "/api/v1/predict"): '"charges":',
    ("POST", "/api/v1/predict/csv"): ",charges,charges_low,charges_high",
    ("POST", "/api/v1/predict/csv/summary"): '"total":',
    ("POST", "/predict_api"): ".",  # a bare number such as 6043.2
    ("GET", "/api/v1/model"): '"version":',
    ("POST", "/api/v1/actuals"): '"added":',
    ("GET", "/"): 'name="age"',
    ("POST", "/"): 'id="charges"',
    ("POST", "/predict"): 'id="charges"',
}


def test_head_of_the_form_needs_a_key_too(keyed: TestClient) -> None:
    assert keyed.head("/").status_code == 401
    assert keyed.head("/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_keys_do_not_close_what_forecasts_nothing(keyed: TestClient) -> None:
    for method, path in sorted(OPEN):
        assert keyed.request(method, path).status_code == 200, path


def test_without_keys_the_form_forecasts_for_anyone(client: TestClient) -> None:
    response = client.post("/predict", data=FORM)
    assert response.status_code == 200
    assert 'id="charges"' in response.text


def test_an_open_form_beside_keys_is_refused_at_start() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys=KEY, form_requires_key=False)  # type: ignore[arg-type]
    (error,) = caught.value.errors()
    assert error["loc"] == ("form_requires_key",)
    assert "every route that returns a forecast needs a key" in error["msg"]
    assert Settings(api_keys=KEY).form_requires_key is True  # type: ignore[arg-type]
    assert Settings(form_requires_key=False).api_keys == ()  # no keys: nothing to leave open


def test_keyed_document_marks_the_form_as_keyed(keyed: TestClient) -> None:
    document = keyed.get("/openapi.json").json()
    for path in ("/", "/predict"):
        for op in document["paths"][path].values():
            assert op["security"] == [{"bearerAuth": []}]
            assert "401" in op["responses"]
            assert "identity-aware proxy" in op["description"]


# -- headers ----------------------------------------------------------------------------
def test_every_answer_says_no_store_and_nosniff(client: TestClient) -> None:
    for what, response in _requests(client):
        assert response.status_code < 500, what
        for name, value in COMMON.items():
            assert response.headers.get_list(name) == [value], (what, name)


def _style_hashes(page: str) -> set[str]:
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"
        for css in re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    }


def _policy(response: Any) -> dict[str, list[str]]:
    (header,) = response.headers.get_list("content-security-policy")
    out: dict[str, list[str]] = {}
    for directive in header.split(";"):
        name, *sources = directive.split()
        out[name] = sources
    return out


def test_the_policy_names_each_style_block_by_hash_and_no_unclosed_one() -> None:
    page = "<style>a{}</style><p>x</p><style>b<i>{}</style><style>never closed"
    policy = headers.page_policy(page)
    assert policy.startswith(
        f"default-src 'none'; style-src {headers.style_source('a{}')} {headers.style_source('b<i>{}')}; "
    )
    assert policy.count("sha256-") == 2
    assert "style-src" not in headers.page_policy("<p>no style</p>")


def test_pages_allow_only_their_own_stylesheet_and_no_script(client: TestClient, keyed: TestClient) -> None:
    pages = {
        "empty form": client.get("/"),
        "form result": client.post("/", data=FORM),
        "form errors": client.post("/predict", data=FORM | {"bmi": ""}),
        "form transport error": client.post("/predict", content=b"{}", headers=JSON_TYPE),
        "docs": client.get("/docs"),
        "no key": keyed.get("/"),
    }
    for what, response in pages.items():
        assert response.headers["content-type"] == "text/html; charset=utf-8", what
        policy = _policy(response)
        assert policy["default-src"] == ["'none'"], what  # no script-src: no script at all
        assert "script-src" not in policy, what
        assert policy["frame-ancestors"] == ["'none'"], what
        assert policy["base-uri"] == ["'none'"], what
        assert policy["img-src"] == ["data:"], what
        styles = _style_hashes(response.text)
        assert set(policy.get("style-src", [])) == styles, what  # exactly the page's own <style> blocks
        assert "'unsafe-inline'" not in str(policy), what
        assert "<script" not in response.text, what
        assert " style=" not in response.text, what  # a style attribute would be blocked
    assert _policy(pages["empty form"])["form-action"] == ["'self'"]  # the form posts to /
    assert _policy(pages["docs"])["form-action"] == ["'none'"]
    assert _style_hashes(pages["empty form"].text)  # the form and docs do have a stylesheet
    assert _style_hashes(pages["docs"].text)


def test_a_500_carries_the_headers_too(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"boom in {model_dir}")

    with TestClient(create_app(Settings(model_dir=model_dir, log_level="error")), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(routes, "predict_bare", broken)
        response = c.post("/predict_api", content=orjson.dumps(RECORD), headers=JSON_TYPE)
    error_issues(response, 500)
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, name
    assert str(model_dir) not in response.text


# -- no filesystem paths in error bodies ------------------------------------------------
def test_no_error_body_shows_the_model_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "secret-location" / "models" / "current"
    model_dir.mkdir(parents=True)
    (model_dir / "metadata.json").write_text("{not json", encoding="utf-8")  # fails to load, naming its path
    monkeypatch.setattr(service_module, "MODEL_WAIT_SECONDS", 0.05)
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="error"))) as c:
        deadline = time.monotonic() + 10
        while c.app.state.service.load_error is None:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "secret-location" in c.app.state.service.load_error  # type: ignore[attr-defined]  # the log has it
        answers = [call(c, method, path) for method, path in sorted(FORECASTING | OPEN)]
        answers += [c.get("/nope/../../etc/passwd"), c.delete("/"), c.post("/api/v1/predict", content=b"{")]
    statuses = Counter(r.status_code for r in answers)
    assert statuses[503] >= len(FORECASTING) + 1  # every forecasting route and readiness: not ready
    for response in answers:
        assert "secret-location" not in response.text, (response.url, response.text)
        assert str(tmp_path) not in response.text
        assert response.status_code < 500 or response.status_code == 503


def test_a_loaded_model_shows_no_path_either(client: TestClient, model_dir: Path) -> None:
    for what, response in _requests(client):
        assert str(model_dir.parent) not in response.text, what


# -- strict JSON: duplicate keys ---------------------------------------------------------
DUPLICATE = jsonbody.DUPLICATE_KEY_RULE


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            b'{"age": 30, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "south", "age": 70}',
            ["age"],
        ),
        (b'[{"age": 30}, {"bmi": 1, "bmi": 2, "bmi": 3}]', ["[1].bmi"]),
        (b'{"age": 39, "\\u0061ge": 40}', ["age"]),  # the same key, spelled with an escape
        (b'{"region": {"name": 1, "name": 2}}', ["region.name"]),
        (b'[[{"a": 1}], [{"b": 1}, {"a:b": 1, "a:b": 2}]]', ["[1][1].a:b"]),
        (b'{"x": [{"y": 1, "y": 2}], "x": 3}', ["x[0].y", "x"]),
    ],
    ids=["record", "list-index", "escaped", "nested", "colon-in-key", "document-order"],
)
def test_duplicate_keys_are_422_naming_each(client: TestClient, body: bytes, fields: list[str]) -> None:
    for path in ("/api/v1/predict", "/predict_api"):
        response = client.post(path, content=body, headers=JSON_TYPE)
        issues = error_issues(response, 422)
        assert [i["field"] for i in issues] == fields, path
        assert all(i["rule"] == DUPLICATE for i in issues)
        assert f"{fields[0]}: {DUPLICATE}" in response.json()["error"]["message"]


def test_colons_inside_strings_are_not_duplicates(client: TestClient) -> None:
    body = orjson.dumps({**RECORD, "region": "south:east"})
    (issue,) = error_issues(client.post("/api/v1/predict", content=body, headers=JSON_TYPE), 422)
    assert (issue["field"], issue["value"]) == ("region", "south:east")
    unknown = orjson.dumps({**RECORD, "note:": "a:b", "x": {"y:": ":"}})
    issues = error_issues(client.post("/api/v1/predict", content=unknown, headers=JSON_TYPE), 422)
    assert {i["field"] for i in issues} == {"note:", "x"}  # unknown fields, not duplicates


def test_a_duplicate_deeper_than_pythons_stack_is_still_found() -> None:
    depth = 1000  # orjson reads up to 1024 levels; json's parser runs out of stack first
    body = b"[" * depth + b'{"a:": 1, "a:": 2}' + b"]" * depth
    with pytest.raises(errors.ApiError) as caught:
        jsonbody.parse_json(body)
    assert caught.value.status == 422
    assert [i.field for i in caught.value.issues] == ["[0]" * depth + ".a:"]


def test_many_duplicates_are_capped_and_counted() -> None:
    body = orjson.dumps([{"k": i} for i in range(50)]).replace(b'{"k"', b'{"k":0,"k"')
    with pytest.raises(errors.ApiError) as caught:
        jsonbody.parse_json(body)
    assert [i.field for i in caught.value.issues] == [f"[{i}].k" for i in range(MAX_REPORTED_ISSUES)]
    assert f"the first {MAX_REPORTED_ISSUES} of 50 problems" in caught.value.message


# The reference: json's own parser keeping every pair, walked recursively in document order.
class Pairs(list[tuple[str, Any]]):
    pass


def reference_duplicates(text: str | bytes) -> list[str]:
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Pairs):
            seen: Counter[str] = Counter()
            for key, value in node:
                seen[key] += 1
                where = f"{path}.{key}" if path else key
                if seen[key] == 2:
                    found.append(where)
                walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(json.loads(text, object_pairs_hook=Pairs), "")
    return found


def _escape_all(text: str) -> str:
    """A JSON string with every character as \\uXXXX (astral ones as surrogate pairs)."""
    units = text.encode("utf-16-be")
    return '"' + "".join(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)) + '"'


TRICKY = ["a", "b", "age", "", ":", "a:b", 'q"', '"', "\\", "\\u0061", "é", "😀", "{", "}", "[", ",", " : "]
strings = st.one_of(st.sampled_from(TRICKY), st.text(max_size=5))
spellings = st.sampled_from(["ascii", "utf8", "escaped"])


def _string(text: str, spelling: str) -> str:
    if spelling == "escaped":
        return _escape_all(text)
    return json.dumps(text, ensure_ascii=spelling == "ascii")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.tuples(st.just("string"), strings, spellings),
)


def _tree(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(st.just("array"), st.lists(children, max_size=4)),
        st.tuples(st.just("object"), st.lists(st.tuples(strings, spellings, children), max_size=5)),
    )


documents = st.recursive(scalars, _tree, max_leaves=30)


def _render(node: Any, space: str) -> str:
    """JSON text of a generated node, keeping every pair (so duplicates survive) and its spelling."""
    kind = node[0] if isinstance(node, tuple) else None
    if kind == "array":
        return "[" + f",{space}".join(_render(item, space) for item in node[1]) + f"{space}]"
    if kind == "object":
        pairs = (f"{space}{_string(k, how)}{space}:{space}{_render(v, space)}" for k, how, v in node[1])
        return "{" + ",".join(pairs) + f"{space}}}"
    if kind == "string":
        return _string(node[1], node[2])
    return json.dumps(node)


@settings(max_examples=400, deadline=None)
@given(documents, st.sampled_from(["", " ", "\n\t "]))
def test_duplicate_keys_match_the_reference(document: Any, space: str) -> None:
    text = _render(document, space)
    body = text.encode("utf-8")
    want = reference_duplicates(text)
    issues, total = jsonbody.duplicate_keys(body)
    assert [i.field for i in issues] == want[:MAX_REPORTED_ISSUES]
    assert total == len(want)
    if want:
        with pytest.raises(errors.ApiError) as caught:
            jsonbody.parse_json(body)
        assert caught.value.status == 422
        assert [i.field for i in caught.value.issues] == want[:MAX_REPORTED_ISSUES]
    else:
        assert jsonbody.parse_json(body) == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["age", "sex", "a:b", "x"]), min_size=1, max_size=8), st.booleans())
def test_the_colon_count_proof_never_lets_a_duplicate_through(keys: list[str], nest: bool) -> None:
    """Bodies built to make the cheap count and the real key count as close as possible."""
    pairs = ",".join(f'"{k}":{{"{k}":1}}' if nest else f'"{k}":"{k}"' for k in keys)
    body = ("{" + pairs + "}").encode()
    want = reference_duplicates(body)
    if want:
        with pytest.raises(errors.ApiError):
            jsonbody.parse_json(body)
    else:
        jsonbody.parse_json(body)


# -- strict query strings ----------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    [
        "explain=true&explain=false",
        "explain=false&explain=true",
        "explain=true&explain=true",
        "expl%61in=true&explain=false",
    ],
)
def test_a_repeated_flag_is_422_not_last_wins(client: TestClient, query: str) -> None:
    for body in (RECORD, [RECORD]):
        response = client.post(f"/api/v1/predict?{query}", content=orjson.dumps(body), headers=JSON_TYPE)
        (issue,) = error_issues(response, 422)
        assert (issue["field"], issue["rule"]) == ("explain", "must appear at most once")


@pytest.mark.parametrize(("method", "path"), sorted(FORECASTING - {("GET", "/"), ("POST", "/"), ("POST", "/predict")}))
def test_every_api_route_refuses_repeated_or_unknown_parameters(client: TestClient, method: str, path: str) -> None:
    for query in ("x=1&x=2", "explain=true&explain=true"):
        url = f"{path}?{query}"
        if method == "GET":
            response = client.get(url)
        elif path.startswith("/api/v1/predict/csv"):
            response = client.post(url, content=CSV, headers=CSV_TYPE)
        else:
            response = client.post(url, content=orjson.dumps(RECORD), headers=JSON_TYPE)
        issues = error_issues(response, 422)
        assert {i["field"] for i in issues} <= {"x", "explain"}, (url, issues)
        assert issues


@pytest.mark.parametrize("query", ["explain=true&explain=false", "x=1", "age=30"])
def test_the_form_takes_no_query_parameters_either(client: TestClient, query: str) -> None:
    for response in (client.get(f"/?{query}"), client.post(f"/predict?{query}", data=FORM)):
        assert response.status_code == 422, response.text[:200]
        assert "query" in response.text or "not a query parameter" in response.text


def test_a_form_field_sent_twice_is_a_422_naming_it(client: TestClient) -> None:
    body = "&".join(f"{k}={v}" for k, v in FORM.items()) + "&age=70"
    response = client.post("/predict", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422
    assert "age" in response.text
    assert "more than once" in response.text
    assert "Expected cost" not in response.text  # no forecast for a guess
