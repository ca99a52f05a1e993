"""Custom resources checked the way the API server checks them, with no API server.

A custom resource is refused when it breaks its CRD's ``openAPIV3Schema`` (unknown fields included:
kubectl's strict field validation refuses them) or one of its CEL rules (``x-kubernetes-validations``),
and both run after the schema's defaults are filled in. This module does the three, from the real
CRDs in ../shared/k8s-crds: defaults, the schema closed to unknown fields, and every CEL rule of every
field present, evaluated by cel-python with the Kubernetes property-name escaping.

What it does not do: ObjectMeta validation beyond the name, ``format`` checks, transition rules
(``oldSelf``: there is no old object on create), and the admission webhooks a cluster may add.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped, unused-ignore]  # no stubs in the dev lock
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, bool_eq

Obj = dict[str, Any]

CRDS = Path(__file__).resolve().parents[2] / "shared" / "k8s-crds"
FILES = {
    "PodMonitoring": "monitoring.googleapis.com_podmonitorings.yaml",
    "Rules": "monitoring.googleapis.com_rules.yaml",
    "Gateway": "gateway.networking.k8s.io_gateways.yaml",
    "HTTPRoute": "gateway.networking.k8s.io_httproutes.yaml",
    "HealthCheckPolicy": "networking.gke.io_healthcheckpolicies.yaml",
    "GCPBackendPolicy": "networking.gke.io_gcpbackendpolicies.yaml",
}
# CEL's reserved words: Kubernetes exposes a property of that name as __name__ (KEP-2876).
CEL_RESERVED = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if"}
    | {"import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@cache
def crd(kind: str) -> Obj:
    """The CustomResourceDefinition of ``kind`` (a skip on a machine without ../shared, a failure in CI)."""
    path = CRDS / FILES[kind]
    if not path.is_file():
        message = f"{path} is missing (the repository sits beside shared/, which holds the CRDs)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    result: Obj = yaml.safe_load(path.read_text())
    assert result["spec"]["names"]["kind"] == kind
    return result


def crd_schema(kind: str, version: str) -> Obj:
    """spec.versions[name == version].schema.openAPIV3Schema, for a version the CRD serves."""
    (served,) = [v for v in crd(kind)["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: Obj = served["schema"]["openAPIV3Schema"]
    return schema


def schema_of(obj: Obj) -> Obj:
    group, version = obj["apiVersion"].split("/")
    assert crd(obj["kind"])["spec"]["group"] == group, f"{obj['kind']} is not in {group}"
    return crd_schema(obj["kind"], version)


def closed(schema: Obj) -> Obj:
    """The schema with unknown fields refused wherever it lists the known ones.

    The API server drops (or, with kubectl's default strict field validation, refuses) fields a
    structural schema does not declare; plain JSON Schema would let them through.
    """
    result = {key: closed(value) if isinstance(value, dict) else value for key, value in schema.items()}
    for key in ("properties", "patternProperties"):
        if isinstance(schema.get(key), dict):
            result[key] = {name: closed(sub) for name, sub in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        result["items"] = closed(schema["items"])
    preserves = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserves:
        result["additionalProperties"] = False
    return result


def defaulted(value: Any, schema: Obj) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does before validating."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = defaulted(out[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(out) - set(schema.get("properties", {})):
                out[name] = defaulted(out[name], extra)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(item, schema["items"]) for item in value]
    return value


def cel_name(name: str) -> str | None:
    """How a CEL rule spells the property ``name``; None for a name it cannot reach."""
    if name in CEL_RESERVED:
        return f"__{name}__"
    if not re.fullmatch(r"[A-Za-z_./-][A-Za-z0-9_./-]*", name):
        return None
    for raw, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(raw, escaped)
    return name


def to_cel(value: Any, schema: Obj) -> Any:
    """A JSON value as CEL sees it: objects with declared properties get escaped field names, maps do not."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        pairs = ((cel_name(k), to_cel(v, props.get(k, {}))) for k, v in value.items())
        return celtypes.MapType({celtypes.StringType(k): v for k, v in pairs if k is not None})
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        extra = schema["additionalProperties"]
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, extra) for k, v in value.items()})
    if isinstance(value, list):
        item = schema["items"] if isinstance(schema.get("items"), dict) else {}
        return celtypes.ListType([to_cel(v, item) for v in value])
    return json_to_cel(value)


def _split(text: Any, separator: Any) -> Any:
    """Kubernetes' strings library ``split`` (these CRDs' rules call it and ``isURL``, nothing else non-standard)."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(separator))])


def _is_url(text: Any) -> Any:
    """Kubernetes' ``isURL``: Go's url.ParseRequestURI accepts an absolute URI or an absolute path."""
    value = str(text)
    absolute = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value) or value.startswith("/")
    return celtypes.BoolType(bool(absolute) and not re.search(r"[\s\x00-\x1f\x7f]", value))


NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _equal(a: Any, b: Any) -> Any:
    """CEL's heterogeneous equality, as Kubernetes evaluates it: values of different types are unequal.

    cel-python raises instead, which matters for int-or-string fields (PodMonitoring's ``port != 0``).
    """
    for side in (a, b):
        if isinstance(side, CELEvalError):
            return side  # an absent field stays an error, as in Kubernetes: has() is how to ask
    if isinstance(a, NUMBERS) and isinstance(b, NUMBERS):
        return celtypes.BoolType(float(a) == float(b))
    if type(a) is not type(b) and not (isinstance(a, type(b)) or isinstance(b, type(a))):
        return celtypes.BoolType(False)
    return bool_eq(a, b)


def _not_equal(a: Any, b: Any) -> Any:
    equal = _equal(a, b)
    return equal if isinstance(equal, CELEvalError) else celtypes.logical_not(equal)


FUNCTIONS: dict[str, Callable[..., Any]] = {"split": _split, "isURL": _is_url, "_==_": _equal, "_!=_": _not_equal}


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=FUNCTIONS)


def _rule_errors(value: Any, schema: Obj, path: str) -> list[str]:
    errors = []
    for check in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in check["rule"]:
            continue  # a transition rule: it judges updates, and a new object has no old self
        message = check.get("message") or f"failed rule: {check['rule']}"
        try:
            passed = _program(check["rule"]).evaluate({"self": to_cel(value, schema)})
        except CELEvalError as error:  # the API server refuses an object its rule cannot evaluate
            errors.append(f"{path}: {message} (evaluation error: {error.args[0]})")
            continue
        if not (isinstance(passed, celtypes.BoolType) and passed):
            errors.append(f"{path}: {message}")
    return errors


def cel_errors(value: Any, schema: Obj, path: str = "") -> list[str]:
    """Every CEL rule on ``value`` and on each field below it that is present; one line per failure."""
    errors = _rule_errors(value, schema, path or "<root>")
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for name, sub in value.items():
            sub_schema = props.get(name, extra if isinstance(extra, dict) else None)
            if sub_schema is not None:
                errors += cel_errors(sub, sub_schema, f"{path}/{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(item, schema["items"], f"{path}/{index}")
    return errors


def crd_errors(obj: Obj) -> list[str]:
    """Why the API server would refuse ``obj``: one line per error, empty when it would accept it."""
    schema = schema_of(obj)
    full = defaulted(obj, schema)
    validator = jsonschema.Draft4Validator(closed(schema), format_checker=jsonschema.FormatChecker())
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(full)]
    name = obj.get("metadata", {}).get("name", "")
    if not (len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name)):
        errors.append(f"/metadata/name: {name!r} is not a DNS subdomain name")
    return errors + cel_errors(full, schema)


def rules_in(kind: str, version: str) -> list[str]:
    """Every CEL rule the CRD declares, for checking that the evaluator understands them all."""
    found: list[str] = []

    def walk(schema: Obj) -> None:
        found.extend(check["rule"] for check in schema.get("x-kubernetes-validations", []))
        for key in ("properties", "patternProperties"):
            for sub in schema.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key])

    walk(crd_schema(kind, version))
    return found


# The functions the evaluator knows: CEL's standard ones these CRDs use, and FUNCTIONS.
KNOWN_FUNCTIONS = frozenset(
    {"has", "size", "all", "exists", "exists_one", "filter", "map", "matches", "contains", "startsWith"}
    | {"endsWith", "duration", "timestamp", "int", "uint", "double", "string", "bool", "type"}
    | {name for name in FUNCTIONS if name[0].isalpha()}
)


def unknown_functions(rule: str) -> set[str]:
    """The functions ``rule`` calls that the evaluator lacks (string literals left out)."""
    code = re.sub(r'r"""[^"]*"""|\'[^\']*\'|"[^"]*"', "''", rule)
    return set(re.findall(r"([A-Za-z_]\w*)\s*\(", code)) - KNOWN_FUNCTIONS


def compiles(rule: str) -> bool:
    try:
        _program(rule)
    except CELParseError:
        return False
    return True
