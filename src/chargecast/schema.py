"""The patient record: the single source of truth for inputs.

The form, the API, CSV validation and the training columns all derive from ``FIELDS``.
Validation never raises anything but :class:`ValidationError`, whose issues name the
line (for files: the physical line the record starts on), the field, the offending value and
the rule it broke.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

TARGET: Final = "charges"
MAX_REPORTED_ISSUES: Final = 20


@dataclass(frozen=True)
class NumberField:
    """A numeric input with an inclusive range; ``integer`` fields reject fractions."""

    name: str
    label: str
    help: str
    minimum: float
    maximum: float
    integer: bool
    example: float
    step: float = 1.0
    kind: Literal["number"] = "number"

    @property
    def rule(self) -> str:
        what = "a whole number" if self.integer else "a number"
        return f"must be {what} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"


@dataclass(frozen=True)
class CategoryField:
    """A categorical input; values are matched ignoring case and surrounding spaces."""

    name: str
    label: str
    help: str
    choices: tuple[str, ...]
    example: str
    choice_labels: tuple[str, ...] = ()
    kind: Literal["category"] = "category"

    @property
    def rule(self) -> str:
        return "must be one of " + ", ".join(self.choices)

    def labels(self) -> tuple[str, ...]:
        return self.choice_labels or tuple(c.capitalize() for c in self.choices)


Field = NumberField | CategoryField

# Ranges: the training data spans age 18-64, bmi 15.96-53.13, children 0-5. The API accepts
# the wider, physically plausible ranges below (adults only: the data has no minors), and
# the artifact's metadata records the training ranges; the form warns beyond them.
FIELDS: Final[tuple[Field, ...]] = (
    NumberField(
        "age",
        "Age",
        "Age in whole years at admission (adults only).",
        minimum=18,
        maximum=100,
        integer=True,
        example=39,
    ),
    CategoryField(
        "sex",
        "Sex",
        "Sex recorded on the policy.",
        choices=("female", "male"),
        example="female",
    ),
    NumberField(
        "bmi",
        "Body mass index",
        "Weight in kg divided by the square of height in m.",
        minimum=10,
        maximum=80,
        integer=False,
        example=30.4,
        step=0.01,
    ),
    NumberField(
        "children",
        "Children",
        "Number of children or dependants covered by the policy.",
        minimum=0,
        maximum=10,
        integer=True,
        example=1,
    ),
    CategoryField(
        "smoker",
        "Smoker",
        "Does the patient smoke?",
        choices=("no", "yes"),
        example="no",
    ),
    CategoryField(
        "region",
        "Region",
        "Residential area in the US.",
        choices=("northeast", "northwest", "southeast", "southwest"),
        example="southeast",
        choice_labels=("North-east", "North-west", "South-east", "South-west"),
    ),
)
FIELD_BY_NAME: Final[dict[str, Field]] = {f.name: f for f in FIELDS}
FEATURES: Final[tuple[str, ...]] = tuple(f.name for f in FIELDS)
# The one key a record may carry beyond the features: the caller's reference for the patient,
# which the audit log stores only as a keyed hash (HMAC-SHA256; docs/audit.md). Empty means none.
PATIENT_REF: Final = "patient_ref"
PATIENT_REF_MAX_CHARS: Final = 128
PATIENT_REF_RULE: Final = f"must be a string of at most {PATIENT_REF_MAX_CHARS} characters (optional)"


def check_patient_ref(value: Any) -> str | None:
    """The rule ``value`` breaks as a patient reference, or None (None and "" mean no reference)."""
    if value is None or (isinstance(value, str) and len(value) <= PATIENT_REF_MAX_CHARS):
        return None
    return PATIENT_REF_RULE


# A record encoded as floats, in FEATURES order; categories become their index in `choices`.
Encoded = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Issue:
    """One broken rule: which line of a file (the record's first), field, value and rule."""

    field: str
    rule: str
    value: Any = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        shown = "" if self.value is None else f" (got {_show(self.value)})"
        return f"{where}{self.field}: {self.rule}{shown}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule}
        if self.line is not None:
            out["line"] = self.line
        if self.value is not None:
            value = self.value if _jsonable(self.value) else _REPR.repr(self.value)
            out["value"] = value[:80] + "…" if isinstance(value, str) and len(value) > 80 else value
        return out


@dataclass
class ValidationError(ValueError):
    """Input broke the schema; ``issues`` lists the first problems (``truncated`` if more)."""

    issues: list[Issue]
    truncated: bool = False
    total: int = field(default=0)

    def __post_init__(self) -> None:
        self.total = max(self.total, len(self.issues))
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(i) for i in self.issues]
        if self.truncated:
            lines.append(f"... and {self.total - len(self.issues)} more")
        return "; ".join(lines)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 36, 36, 4, 4
MAX_NAME_CHARS: Final = 80


def _number(text: str) -> float | None:
    """A number written as plain ASCII decimals; float() alone would also take "5_2", "٥٢",
    "nan", and it strips a narrower set of spaces than str.strip (not "\\x1f")."""
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def _show(value: Any) -> str:
    """A short repr; bounded in depth too, so a deeply nested value cannot recurse."""
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(key: Any) -> str:
    """A field name as errors show it: unknown names can be arbitrarily long."""
    text = str(key) if isinstance(key, str) else _REPR.repr(key)
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"


def _jsonable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def check_value(spec: Field, value: Any) -> float | Issue:
    """Validate one value; return its float encoding or the broken rule."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Issue(spec.name, "is required", None)
    if isinstance(spec, CategoryField):
        if not isinstance(value, str):
            return Issue(spec.name, spec.rule, value)
        text = value.strip().lower()
        try:
            return float(spec.choices.index(text))
        except ValueError:
            return Issue(spec.name, spec.rule, value)
    if isinstance(value, bool):
        return Issue(spec.name, spec.rule, value)
    if isinstance(value, str):
        parsed = _number(value)
        if parsed is None:
            return Issue(spec.name, spec.rule, value)
        number = parsed
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        return Issue(spec.name, spec.rule, value)
    if not math.isfinite(number):
        return Issue(spec.name, "must be a finite number", str(value))
    if spec.integer and not number.is_integer():
        return Issue(spec.name, spec.rule, value)
    if not spec.minimum <= number <= spec.maximum:
        return Issue(spec.name, spec.rule, value)
    return number


def validate_record(obj: Any, *, row: int | None = None, field_prefix: str = "") -> tuple[list[float], list[Issue]]:
    """Check one record; return its encoding and every issue found in it.

    Unknown fields are an error (a typo such as ``smoking`` must not silently fall back
    to a default); ``field_prefix`` lets list callers name fields like ``[3].age``.
    """
    if not isinstance(obj, Mapping):
        where = field_prefix.rstrip(".") or "record"
        return [], [Issue(where, "must be an object with the six fields", None, row)]
    issues: list[Issue] = []
    encoded: list[float] = []
    for spec in FIELDS:
        result = check_value(spec, obj.get(spec.name))
        if isinstance(result, Issue):
            issues.append(Issue(field_prefix + spec.name, result.rule, result.value, row))
        else:
            encoded.append(result)
    for key in obj:
        if key == PATIENT_REF:
            if (broken := check_patient_ref(obj[key])) is not None:
                issues.append(Issue(field_prefix + PATIENT_REF, broken, obj[key], row))
        elif key not in FIELD_BY_NAME:
            issues.append(Issue(field_prefix + _name(key), "is not a known field", None, row))
    return encoded, issues


def encode_record(obj: Any) -> Encoded:
    """Validate and encode one record, raising :class:`ValidationError`."""
    encoded, issues = validate_record(obj)
    if issues:
        raise ValidationError(issues)
    age, sex, bmi, children, smoker, region = encoded
    return age, sex, bmi, children, smoker, region


def encode_records(objs: Sequence[Any], *, prefix: bool = True) -> npt.NDArray[np.float64]:
    """Validate a list of records into an (n, 6) float array; errors name ``[i].field``."""
    rows = np.empty((len(objs), len(FIELDS)), dtype=np.float64)
    issues: list[Issue] = []
    for i, obj in enumerate(objs):
        encoded, found = validate_record(obj, field_prefix=f"[{i}]." if prefix else "")
        if found:
            issues.extend(found)
        elif not issues:
            rows[i] = encoded
    if issues:
        raise _error(issues)
    return rows


def _error(issues: list[Issue]) -> ValidationError:
    return ValidationError(issues[:MAX_REPORTED_ISSUES], len(issues) > MAX_REPORTED_ISSUES, len(issues))


def encode_columns(columns: Mapping[str, npt.ArrayLike], *, first_row: int = 1) -> npt.NDArray[np.float64]:
    """Validate a table given column-wise into an (n, 6) float array, vectorised.

    Numeric columns may be floats (NaN means missing) or strings; category columns are
    strings. ``first_row`` is the number reported for the table's first data row.
    """
    missing = [name for name in FEATURES if name not in columns]
    if missing:
        raise ValidationError([Issue(name, "column is required", None) for name in missing])
    n = len(np.asarray(columns[FEATURES[0]]))
    out = np.empty((n, len(FIELDS)), dtype=np.float64)
    masks: list[npt.NDArray[np.bool_]] = []
    raws: list[npt.NDArray[Any]] = []
    for j, spec in enumerate(FIELDS):
        raw = np.asarray(columns[spec.name])
        if len(raw) != n:
            raise ValidationError([Issue(spec.name, f"column has {len(raw)} values, expected {n}")])
        out[:, j], bad = _column(spec, raw)
        masks.append(bad)
        raws.append(raw)
    refs = _patient_refs(columns, n)
    bad_any = np.logical_or.reduce([*masks, refs[1]]) if masks else np.zeros(n, dtype=bool)
    if not bad_any.any():
        return out
    issues: list[Issue] = []
    for i in np.flatnonzero(bad_any):
        for j, spec in enumerate(FIELDS):
            if masks[j][i] and len(issues) < MAX_REPORTED_ISSUES:
                value = _py(raws[j][i])
                found = check_value(spec, value)
                rule = found.rule if isinstance(found, Issue) else spec.rule
                issues.append(
                    Issue(
                        spec.name,
                        rule,
                        found.value if isinstance(found, Issue) else value,
                        int(i) + first_row,
                    )
                )
        if refs[1][i] and len(issues) < MAX_REPORTED_ISSUES:  # after the features, as validate_record
            issues.append(Issue(PATIENT_REF, PATIENT_REF_RULE, _py(refs[0][i]), int(i) + first_row))
        if len(issues) >= MAX_REPORTED_ISSUES:
            break
    total = int(sum(int(m.sum()) for m in masks)) + int(refs[1].sum())
    raise ValidationError(issues, total > len(issues), total)


def _patient_refs(columns: Mapping[str, npt.ArrayLike], n: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """The optional patient_ref column and a mask of cells that break its rule."""
    if PATIENT_REF not in columns:
        return np.empty(0, dtype=object), np.zeros(n, dtype=bool)
    raw = np.asarray(columns[PATIENT_REF], dtype=object)
    if len(raw) != n:
        raise ValidationError([Issue(PATIENT_REF, f"column has {len(raw)} values, expected {n}")])
    return raw, np.array([check_patient_ref(_py(v)) is not None for v in raw], dtype=bool)


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column(spec: Field, raw: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Encode one column; return values and a mask of rows that break the rule."""
    if isinstance(spec, CategoryField):
        codes = np.full(len(raw), np.nan)
        text = np.char.strip(_short_text(raw))
        for k, choice in enumerate(spec.choices):
            codes[text == choice] = k
        rest = np.flatnonzero(np.isnan(codes))
        if len(rest):  # lower-casing is slow per element: only for rows that did not match as is
            lowered = np.char.lower(text[rest])
            for k, choice in enumerate(spec.choices):
                codes[rest[lowered == choice]] = k
        missing = _missing_mask(raw)
        return codes, np.isnan(codes) | missing
    if raw.dtype.kind == "b":  # True/False are not numbers, as in check_value
        return np.full(len(raw), np.nan), np.ones(len(raw), dtype=bool)
    values = raw.astype(np.float64) if raw.dtype.kind in "fiu" else _to_float(raw)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < spec.minimum) | (values > spec.maximum)
        if spec.integer:
            bad |= values != np.floor(values)
    return values, bad


MAX_CATEGORY_CHARS: Final = 64


def _short_text(raw: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
    """Strings capped in length: ``astype(str)`` pads every cell to the longest one, so a
    single huge cell would otherwise ask for gigabytes. No valid category is that long."""
    if raw.dtype.kind == "U" and raw.dtype.itemsize // 4 <= MAX_CATEGORY_CHARS:
        return raw
    if raw.dtype.kind in "OSU":
        # numpy's str arrays drop trailing NULs ("male\x00" would read as "male"): keep them wrong
        cells = [str(v)[: MAX_CATEGORY_CHARS + 1].replace("\x00", "\ufffd") for v in raw.tolist()]
        return np.array(cells, dtype=f"<U{MAX_CATEGORY_CHARS + 1}")
    return raw.astype(str)


def _missing_mask(raw: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    if raw.dtype.kind == "O":
        return np.array([v is None for v in raw], dtype=bool)
    return np.zeros(len(raw), dtype=bool)


def _to_float(raw: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Parse a text column like check_value does: ASCII decimals only, vectorised when it can."""
    if raw.dtype.kind in "US":
        try:
            text = raw.astype(np.bytes_)  # non-ASCII digits such as "٥٢" stop here
            values = text.astype(np.float64)
        except (ValueError, TypeError, UnicodeEncodeError):
            pass
        else:
            values[np.char.find(text, b"_") >= 0] = np.nan  # float() would read "5_2" as 52
            return values
    return np.array([_float_or_nan(v) for v in raw], dtype=np.float64)


def _float_or_nan(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, str):
        number = _number(value)
        return math.nan if number is None else number
    try:
        return float(value)
    except (ValueError, TypeError):
        return math.nan


def decode(encoded: Iterable[float]) -> dict[str, float | str]:
    """Turn an encoded row back into a record (for explanations and reports)."""
    out: dict[str, float | str] = {}
    for spec, value in zip(FIELDS, encoded, strict=True):
        if isinstance(spec, CategoryField):
            out[spec.name] = spec.choices[int(value)]
        else:
            out[spec.name] = int(value) if spec.integer else float(value)
    return out


def describe() -> list[dict[str, Any]]:
    """The schema as plain data, for metadata.json and the OpenAPI document."""
    out: list[dict[str, Any]] = []
    for spec in FIELDS:
        item: dict[str, Any] = {"name": spec.name, "label": spec.label, "help": spec.help, "kind": spec.kind}
        if isinstance(spec, NumberField):
            item |= {
                "type": "integer" if spec.integer else "number",
                "minimum": spec.minimum,
                "maximum": spec.maximum,
                "example": spec.example,
            }
        else:
            item |= {"type": "string", "enum": list(spec.choices), "example": spec.example}
        out.append(item)
    return out
