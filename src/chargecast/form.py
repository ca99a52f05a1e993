"""The HTML form for people: one page with the six inputs, inline errors and the result.

A minimal placeholder so the routes and their tests work; the real page replaces this
module and must keep :func:`render_page`'s signature and :class:`FormResult`'s fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from chargecast.artifact import Artifact
from chargecast.schema import FIELDS, CategoryField, NumberField

# ``errors`` may carry a message that belongs to no field under this key (a body too big, say).
FORM_ERROR_KEY = ""


@dataclass(frozen=True)
class FormResult:
    """What the page shows after a valid submission."""

    charges: float
    low: float
    high: float
    level: float
    contributions: dict[str, float]
    baseline: float


def _money(x: float) -> str:
    return f"${x:,.0f}"


def _input(spec: NumberField | CategoryField, value: str, error: str | None) -> str:
    name = escape(spec.name)
    described = f' aria-describedby="{name}-help{f" {name}-error" if error else ""}"'
    invalid = ' aria-invalid="true"' if error else ""
    if isinstance(spec, NumberField):
        control = (
            f'<input id="{name}" name="{name}" type="number" required min="{spec.minimum:g}" max="{spec.maximum:g}" '
            f'step="{spec.step:g}" value="{escape(value)}"{described}{invalid}>'
        )
    else:
        chosen = value.strip().lower()
        options = ['<option value="">Choose…</option>']
        for choice, label in zip(spec.choices, spec.labels(), strict=True):
            selected = " selected" if choice == chosen else ""
            options.append(f'<option value="{escape(choice)}"{selected}>{escape(label)}</option>')
        control = f'<select id="{name}" name="{name}" required{described}{invalid}>{"".join(options)}</select>'
    message = f'<p class="error" id="{name}-error">{escape(spec.label)} {escape(error)}</p>' if error else ""
    return (
        f'<div class="field"><label for="{name}">{escape(spec.label)}</label>{control}'
        f'<p class="help" id="{name}-help">{escape(spec.help)}</p>{message}</div>'
    )


def _result(result: FormResult) -> str:
    rows = "".join(
        f"<tr><th scope=row>{escape(spec.label)}</th><td>{result.contributions.get(spec.name, 0.0):+,.0f}</td></tr>"
        for spec in FIELDS
    )
    return (
        '<section id="result" aria-live="polite"><h2>Forecast</h2>'
        f'<p class="charges">Expected charges: <strong>{_money(result.charges)}</strong></p>'
        f'<p class="interval">{result.level:.0%} interval: {_money(result.low)} to {_money(result.high)}</p>'
        f"<table><caption>Why: contributions against the average patient ({_money(result.baseline)})</caption>"
        f"{rows}</table></section>"
    )


def render_page(
    *,
    values: Mapping[str, str],
    errors: Mapping[str, str],
    result: FormResult | None,
    model: Artifact,
) -> str:
    """The whole page; every value shown is escaped."""
    fields = "".join(_input(spec, values.get(spec.name, ""), errors.get(spec.name)) for spec in FIELDS)
    general = errors.get(FORM_ERROR_KEY)
    banner = f'<p class="error" role="alert">{escape(general)}</p>' if general else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>chargecast: forecast medical charges</title></head><body><main>"
        "<h1>Forecast a patient's medical charges</h1>"
        f'{banner}<form method="post" action="/predict" novalidate>{fields}'
        '<button type="submit">Forecast</button></form>'
        f"{_result(result) if result else ''}"
        f"<footer>Model {escape(model.version)}</footer></main></body></html>"
    )
