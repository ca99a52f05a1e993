"""The server-rendered web form: one page that asks, answers and explains.

Every input is generated from :data:`chargecast.schema.FIELDS`, so a new field or a
changed range reaches the page without touching markup. The markup is in Jinja2 templates
(``serving/templates/``), autoescaped and compiled once at import; this module works out
what they show (which fields, which errors, where each mark of a chart goes) and formats
the numbers. No JavaScript, fonts, images or CDNs: the page must work offline and behind strict
content-security policies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from jinja2.ext import Extension
from markupsafe import Markup

from chargecast.model.artifact import Artifact
from chargecast.schema import FIELD_BY_NAME, FIELDS, CategoryField, Field, NumberField
from chargecast.serving.predict import FormResult

TITLE: Final = "Estimate a patient's medical charges"
FORM_ERROR_KEY: Final = ""  # errors[""] is shown as a message that belongs to no field (a refused body)
# What contributions are measured from: the model's baseline is the mean forecast over the
# training rows. Named in full wherever it appears, never "a typical patient": the mean of
# skewed charges is not what a typical patient costs.
REFERENCE: Final = "the average patient in the training data"

# One palette feeds the CSS and the contrast test, so a colour change cannot silently
# drop text below WCAG AA (4.5:1).
PALETTE: Final[Mapping[str, str]] = {
    "ink": "#1b1f24",
    "muted": "#4a5361",
    "page": "#eef1f5",
    "card": "#ffffff",
    "line": "#d5dae1",
    "border": "#69707d",  # input borders: non-text contrast needs 3:1
    "accent": "#0b57c2",
    "accent_dark": "#073f8f",
    "on_accent": "#ffffff",
    "error": "#b3261e",
    "error_bg": "#fdf2f1",
    "caution_bg": "#fff8e1",
    "up": "#a8430c",  # an input that raises the estimate
    "down": "#1d5fa8",  # an input that lowers it
    "focus": "#1b1f24",
    "range_fill": "#dbe6f7",  # the range band's fill; its outline (accent) carries the 3:1
}
# (text colour, background) pairs the stylesheet actually uses for text.
TEXT_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("ink", "page"),
    ("ink", "card"),
    ("muted", "page"),
    ("muted", "card"),
    ("accent", "card"),
    ("accent", "page"),
    ("on_accent", "accent"),
    ("on_accent", "accent_dark"),
    ("error", "card"),
    ("error", "error_bg"),
    ("ink", "error_bg"),
    ("ink", "caution_bg"),
    ("up", "card"),
    ("down", "card"),
)


def _num(x: float) -> str:
    """A schema number as people write it: 18, not 18.0."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def dollars(x: float) -> str:
    """Whole dollars with thousands separators; cents would be false precision."""
    if not math.isfinite(x):
        return "n/a"
    n = round(x)
    return f"{'−' if n < 0 else ''}${abs(n):,}"


def signed_dollars(x: float) -> str:
    """Dollars with an explicit sign, so a bar's direction never depends on colour alone."""
    if not math.isfinite(x):
        return "n/a"
    n = round(x)
    return "$0" if n == 0 else f"{'+' if n > 0 else '−'}${abs(n):,}"


def sign_class(x: float) -> str:
    """The CSS class of a contribution, decided on what is shown (whole dollars)."""
    n = round(x) if math.isfinite(x) else 0
    return "positive" if n > 0 else "negative" if n < 0 else "zero"


def _percent(level: float) -> str:
    return f"{round(level * 100, 1):g}%"


def share_of_patients(level: float) -> str:
    """A level as a count of people ("9 in 10 patients"), which reads better than "90%".

    The smallest of 10, 100 or 1000 that makes the share whole; any other level falls back
    to a percentage rather than rounding to a count that would misstate it.
    """
    for whole in (10, 100, 1000):
        k = level * whole
        if abs(k - round(k)) < 1e-9 and 0 < round(k) < whole:
            return f"{round(k)} in {whole} patients"
    return f"{_percent(level)} of patients"


def _choice(spec: CategoryField, raw: str) -> int | None:
    """The index of the submitted choice, matched like the schema does (case, spaces)."""
    text = raw.strip().lower()
    return spec.choices.index(text) if text in spec.choices else None


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _example(spec: Field) -> str:
    return _num(spec.example) if isinstance(spec, NumberField) else spec.example


def _shown_value(spec: Field, raw: str) -> str | None:
    """The patient's value in a clerk's words ("yes", "southwest", "52"), or None if invalid.

    Categories show the word the record holds, not a code or the list of choices; numbers
    show what the model read (" 52 " and "52.0" both as 52).
    """
    if isinstance(spec, CategoryField):
        k = _choice(spec, raw)
        return None if k is None else spec.choices[k]
    value = _number(raw)
    return None if value is None else _num(value)


# -- the form -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Field:
    """One input as fields.html draws it."""

    name: str
    label: str
    help: str
    error: str | None
    value: str  # as submitted, so errors and inputs agree
    number: bool
    minimum: str = ""
    maximum: str = ""
    step: str = ""
    mode: str = ""
    example: str = ""
    options: Sequence[tuple[str, str]] = ()  # (value, label) of a choice
    chosen: int | None = None  # the submitted choice's index, matched like the schema does


def _field(spec: Field, raw: str, error: str | None) -> _Field:
    if isinstance(spec, NumberField):
        return _Field(
            spec.name,
            spec.label,
            f"{spec.help} From {_num(spec.minimum)} to {_num(spec.maximum)}.",
            error,
            raw,
            number=True,
            minimum=_num(spec.minimum),
            maximum=_num(spec.maximum),
            step="1" if spec.integer else "any",
            mode="numeric" if spec.integer else "decimal",
            example=_example(spec),
        )
    assert isinstance(spec, CategoryField)
    options = tuple(zip(spec.choices, spec.labels(), strict=True))
    return _Field(
        spec.name, spec.label, spec.help, error, raw, number=False, options=options, chosen=_choice(spec, raw)
    )


def _error_summary(errors: Mapping[str, str]) -> list[tuple[str | None, str]]:
    """(field to link to, or None, message): fields in the form's order, then the rest."""
    ordered = [name for name in (f.name for f in FIELDS) if name in errors]
    ordered += [name for name in errors if name not in FIELD_BY_NAME]
    return [(name if name in FIELD_BY_NAME else None, errors[name]) for name in ordered]


# -- the result -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bar:
    name: str
    label: str  # carries the patient's value: "Smoker: yes"
    amount: float  # as computed, for the table
    drawn: float  # what the bar shows: 0 for an amount that is not finite
    sign: str  # positive, negative or zero: the CSS class
    x: float  # percent
    width: float  # percent


@dataclass(slots=True)
class _Bars:
    """Horizontal bars from a zero line, largest first."""

    title: str
    zero: float  # percent
    rows: Sequence[_Bar]


@dataclass(slots=True)
class _Tick:
    dollars: float
    x: float  # percent


@dataclass(slots=True)
class _Range:
    """The range band, median and mean on one dollar axis."""

    title: str
    x_low: float
    band_width: float
    x_median: float
    x_mean: float
    ticks: Sequence[_Tick]


@dataclass(slots=True)
class _Answer:
    """What result.html shows: the numbers of a FormResult and what the page says of them."""

    charges: float
    low: float
    high: float
    median: float
    level: float
    baseline: float
    share: str
    mean_note: str
    range: _Range | None
    cautions: Sequence[str]
    bars: _Bars


def _items(result: FormResult, values: Mapping[str, str]) -> list[tuple[str, str, float]]:
    """(feature name, label, dollars) sorted by size; the label carries the patient's value."""
    rows: list[tuple[str, str, float]] = []
    for name, amount in result.contributions.items():
        spec = FIELD_BY_NAME.get(name)
        label = spec.label if spec else name
        shown = _shown_value(spec, str(values.get(name, ""))) if spec else None
        rows.append((name, f"{label}: {shown}" if shown else label, float(amount)))
    order = {f.name: i for i, f in enumerate(FIELDS)}
    rows.sort(key=lambda r: (-abs(r[2]) if math.isfinite(r[2]) else 0.0, order.get(r[0], len(order))))
    return rows


def _bars(rows: list[tuple[str, str, float]]) -> _Bars:
    """Bar positions in percent of the chart's width, so text keeps its size on any screen."""
    amounts = [a if math.isfinite(a) else 0.0 for _, _, a in rows]
    lo, hi = min([0.0, *amounts]), max([0.0, *amounts])
    span = (hi - lo) or 1.0

    def pct(v: float) -> float:
        return (v - lo) / span * 100

    zero = pct(0.0)
    bars = []
    for (name, label, amount), a in zip(rows, amounts, strict=True):
        sign = sign_class(a)
        width = abs(pct(a) - zero)
        if sign != "zero":
            width = max(width, 0.5)  # a hair-thin bar still shows its direction
        bars.append(_Bar(name, label, amount, a, sign, min(zero, pct(a)), width))
    summary = ", ".join(f"{label} {signed_dollars(a)}" for _, label, a in rows)
    return _Bars(f"How each input moved the expected cost, compared with {REFERENCE}: {summary}", zero, bars)


def _cautions(values: Mapping[str, str], model: Artifact) -> list[str]:
    """Name inputs outside what the model was trained on: valid, but extrapolated."""
    ranges = model.metadata.get("training_ranges")
    if not isinstance(ranges, Mapping):
        return []
    notes: list[str] = []
    for spec in FIELDS:
        seen = ranges.get(spec.name)
        value = _number(str(values.get(spec.name, "")))
        if not isinstance(spec, NumberField) or not isinstance(seen, Mapping) or value is None:
            continue
        lo, hi = seen.get("min"), seen.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo <= value <= hi:
            notes.append(f"{spec.label} {_num(value)} (trained on {_num(lo)} to {_num(hi)})")
    return notes


TICK_CHARS: Final = 28


def _ticks(lo: float, hi: float, most: int) -> list[float]:
    """Round dollar ticks whose first and last are the axis ends and that cover [lo, hi],
    with at most ``most`` gaps between them."""
    span = max(hi - lo, 1.0)
    magnitude = 10 ** math.floor(math.log10(span / most))
    for m in (1, 2, 2.5, 5, 10, 20):
        step = m * magnitude
        start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
        if end == start:
            end = start + step
        if round((end - start) / step) <= most:
            return [start + i * step for i in range(round((end - start) / step) + 1)]
    return [lo, hi]  # unreachable: 20x the magnitude is always few enough gaps


def _anchor(pct: float) -> str:
    """Keep a label inside the chart: near an edge it grows inwards from its mark."""
    return "start" if pct < 20 else "end" if pct > 80 else "middle"


def _range(result: FormResult) -> _Range | None:
    """Where the range, median and mean sit on an axis of round ticks (None if any is not finite)."""
    values = (result.low, result.high, result.median, result.charges)
    if not all(math.isfinite(v) for v in values):
        return None
    # About 28 characters of tick labels fit a 360 px phone (four of "$40,000"); longer
    # labels ("$100,000") get fewer ticks rather than overprinting each other.
    most = 3
    ticks = _ticks(min(values), max(values), most)
    while most > 1 and len(ticks) * max(len(dollars(t)) for t in ticks) > TICK_CHARS:
        most -= 1
        ticks = _ticks(min(values), max(values), most)
    lo, hi = ticks[0], ticks[-1]

    def pct(v: float) -> float:
        return (v - lo) / (hi - lo) * 100

    title = (
        f"{share_of_patients(result.level)} like this cost between {dollars(result.low)} and "
        f"{dollars(result.high)}; half cost less than {dollars(result.median)}; expected cost "
        f"{dollars(result.charges)}."
    )
    x_low, x_high = pct(result.low), pct(result.high)
    band = max(x_high - x_low, 0.5)
    return _Range(title, x_low, band, pct(result.median), pct(result.charges), [_Tick(t, pct(t)) for t in ticks])


def _mean_note(result: FormResult) -> str:
    """The plain-words reading of the mean beside the median."""
    note = "The expected cost is the average over patients like this"
    # Decided on the dollars shown, so the sentence never contradicts the figures beside it.
    if round(result.charges) > round(result.median):
        return note + ": it sits above what most of them cost, because a few cost far more."
    return note + "."


def _answer(result: FormResult, values: Mapping[str, str], model: Artifact) -> _Answer:
    return _Answer(
        result.charges,
        result.low,
        result.high,
        result.median,
        result.level,
        result.baseline,
        share_of_patients(result.level),
        _mean_note(result),
        _range(result),
        _cautions(values, model),
        _bars(_items(result, values)),
    )


def _about(model: Artifact) -> list[str]:
    """What the model is and how well it did, so a number is never shown without context."""
    meta = model.metadata
    lines: list[str] = []
    what = meta.get("model_description") or meta.get("model")
    if what:
        lines.append(f"Model: {what}.")
    metrics = meta.get("metrics")
    holdout = metrics.get("holdout") if isinstance(metrics, Mapping) else None
    mae, r2, cover = (holdout.get(k) if isinstance(holdout, Mapping) else None for k in ("mae", "r2", "coverage"))
    if isinstance(mae, (int, float)) and isinstance(r2, (int, float)):
        text = f"On patients held out from training it was off by {dollars(mae)} on average (R² {r2:.2f})"
        if isinstance(cover, (int, float)):
            text += f"; the {_percent(model.level)} interval covered {cover:.0%} of them"
        lines.append(f"{text}.")
    ranges = meta.get("training_ranges")
    if isinstance(ranges, Mapping):
        spans = [
            f"{spec.label.lower()} {_num(r['min'])}–{_num(r['max'])}"
            for spec in FIELDS
            if isinstance(spec, NumberField)
            and isinstance(r := ranges.get(spec.name), Mapping)
            and isinstance(r.get("min"), (int, float))
            and isinstance(r.get("max"), (int, float))
        ]
        if spans:
            lines.append(f"Trained on {', '.join(spans)}.")
    return lines


# -- the templates --------------------------------------------------------------------------
_LAYOUT: Final = re.compile(r"[ \t]*\n[ \t]*")


class _Spaceless(Extension):
    """Drops each line break of a template's source, with the indentation around it.

    Templates are written one element a line, for people; the page goes out as one line, as
    it did when it was built from strings, with no stray whitespace in its text. So text that
    needs a space keeps it on one line.
    """

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return _LAYOUT.sub("", source)


_ENV: Final = Environment(
    loader=PackageLoader("chargecast.serving", "templates"),
    autoescape=select_autoescape(["html"]),  # every value in a page is escaped; the stylesheet is ours
    undefined=StrictUndefined,  # a misspelt name fails the render, not a blank on the page
    auto_reload=False,  # compiled once: no file checks per render
    extensions=[_Spaceless],
)
_ENV.filters.update(
    dollars=dollars,
    signed_dollars=signed_dollars,
    percent=_percent,
    anchor=_anchor,
    cents=lambda x: f"{x:.2f}",
    pct=lambda x: f"{x:.2f}%",
)
# Every template compiled at start (and cached, see auto_reload): a broken one fails the import, not a request.
_TEMPLATES: Final = {name: _ENV.get_template(name) for name in _ENV.list_templates()}
_PAGE: Final = _TEMPLATES["page.html"]
_MESSAGE: Final = _TEMPLATES["message.html"]
CSS: Final = Markup(
    _TEMPLATES["form.css"].render(colours=";".join(f"--{k.replace('_', '-')}:{v}" for k, v in PALETTE.items()))
)


def render_page(
    *, values: Mapping[str, str], errors: Mapping[str, str], result: FormResult | None, model: Artifact
) -> str:
    """The whole page: error summary, result (if any), form, model notes and footer."""
    return _PAGE.render(
        title=TITLE,
        css=CSS,
        share=share_of_patients(model.level),
        percent=_percent(model.level),
        summary=_error_summary(errors),
        result=_answer(result, values, model) if result is not None else None,
        fields=[_field(spec, str(values.get(spec.name, "")), errors.get(spec.name)) for spec in FIELDS],
        about=_about(model),
        reference=REFERENCE,
        version=model.version,
    )


def render_message(text: str) -> str:
    """A bare page with one sentence, for a form request that gets no form (401, 503)."""
    return _MESSAGE.render(message=text)


__all__ = [
    "FORM_ERROR_KEY",
    "PALETTE",
    "REFERENCE",
    "TEXT_PAIRS",
    "dollars",
    "render_message",
    "render_page",
    "share_of_patients",
    "sign_class",
    "signed_dollars",
]
