"""The server-rendered web form: one page that asks, answers and explains.

Every input is generated from :data:`chargecast.schema.FIELDS`, so a new field or a
changed range reaches the page without touching markup. The page is built from plain
strings (no template engine) so that all escaping happens in one place, :func:`_e`.
No JavaScript, fonts, images or CDNs: the page must work offline and behind strict
content-security policies.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Final

from chargecast.model.artifact import Artifact
from chargecast.schema import FIELD_BY_NAME, FIELDS, CategoryField, Field, NumberField
from chargecast.serving.predict import FormResult

TITLE: Final = "Estimate a patient's medical charges"
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


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


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


def _money(x: float) -> str:
    """Dollars that never break across lines on a narrow screen."""
    return f'<span class="money">{_e(dollars(x))}</span>'


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


def _field(spec: Field, raw: str, error: str | None) -> str:
    name = _e(spec.name)
    help_text = spec.help
    if isinstance(spec, NumberField):
        help_text += f" From {_num(spec.minimum)} to {_num(spec.maximum)}."
    describedby = f"{name}-help" + (f" {name}-error" if error else "")
    invalid = ' aria-invalid="true"' if error else ""
    parts = [
        f'<div class="field{" has-error" if error else ""}" id="{name}-field">',
        f'<label for="{name}">{_e(spec.label)}</label>',
        f'<p class="help" id="{name}-help">{_e(help_text)}</p>',
    ]
    if error:
        parts.append(
            f'<p class="error-message" id="{name}-error"><span class="visually-hidden">Error:</span> {_e(error)}</p>'
        )
    common = f'id="{name}" name="{name}" required aria-describedby="{describedby}"{invalid}'
    if isinstance(spec, NumberField):
        # step="any" for real numbers: the server accepts any value in range, so the
        # browser must not flag 30.125 as a step mismatch.
        step = "1" if spec.integer else "any"
        mode = "numeric" if spec.integer else "decimal"
        parts.append(
            f'<input type="number" {common} min="{_num(spec.minimum)}" max="{_num(spec.maximum)}" '
            f'step="{step}" inputmode="{mode}" autocomplete="off" '
            f'placeholder="e.g. {_e(_example(spec))}" value="{_e(raw)}">'
        )
    else:
        # The empty option is always first: nothing is pre-chosen for the clerk, and a
        # choice left alone is sent as "" and reported as missing, never defaulted.
        chosen = _choice(spec, raw)
        options = [f'<option value=""{"" if chosen is not None else " selected"}>Choose…</option>']
        for k, (value, label) in enumerate(zip(spec.choices, spec.labels(), strict=True)):
            selected = " selected" if k == chosen else ""
            options.append(f'<option value="{_e(value)}"{selected}>{_e(label)}</option>')
        parts.append(f'<select {common} autocomplete="off">{"".join(options)}</select>')
    parts.append("</div>")
    return "".join(parts)


def _form(values: Mapping[str, str], errors: Mapping[str, str]) -> str:
    # A fresh page is empty: a pre-filled patient would be predicted for whoever forgot to
    # change a field. A submitted page shows exactly what was sent, even blanks, so errors
    # and inputs always agree.
    fields = "".join(_field(spec, str(values.get(spec.name, "")), errors.get(spec.name)) for spec in FIELDS)
    # novalidate: the server's messages come from the schema and are written for
    # people; the browser's built-in bubbles would pre-empt them with vaguer ones.
    return (
        '<form class="card form" method="post" action="/" enctype="application/x-www-form-urlencoded" '
        'novalidate aria-labelledby="form-title">'
        '<h2 id="form-title">Patient details</h2>'
        f"{fields}"
        '<button type="submit">Estimate charges</button>'
        "</form>"
    )


def _error_summary(errors: Mapping[str, str]) -> str:
    if not errors:
        return ""
    ordered = [name for name in (f.name for f in FIELDS) if name in errors]
    ordered += [name for name in errors if name not in FIELD_BY_NAME]
    items = "".join(
        f'<li><a href="#{_e(name)}">{_e(errors[name])}</a></li>'
        if name in FIELD_BY_NAME
        else f"<li>{_e(errors[name])}</li>"
        for name in ordered
    )
    return (
        '<div class="error-summary" role="alert" aria-labelledby="error-summary-title" tabindex="-1">'
        '<h2 id="error-summary-title">There is a problem</h2>'
        f"<ul>{items}</ul></div>"
    )


# -- the result -----------------------------------------------------------------------------


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


def _chart(rows: list[tuple[str, str, float]]) -> str:
    """Horizontal bars from a zero line; x in percent so text keeps its size on any screen."""
    row_h, bar_y, bar_h, top = 48, 24, 16, 4
    height = top + row_h * len(rows)
    amounts = [a if math.isfinite(a) else 0.0 for _, _, a in rows]
    lo, hi = min([0.0, *amounts]), max([0.0, *amounts])
    span = (hi - lo) or 1.0

    def pct(v: float) -> float:
        return (v - lo) / span * 100

    zero = pct(0.0)
    summary = ", ".join(f"{label} {signed_dollars(a)}" for _, label, a in rows)
    title = f"How each input moved the expected cost, compared with {REFERENCE}: {summary}"
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="chart-title" width="100%" height="{height}">'
        f'<title id="chart-title">{_e(title)}</title>'
    ]
    for i, (name, label, amount) in enumerate(rows):
        y = top + i * row_h
        a = amount if math.isfinite(amount) else 0.0
        cls = sign_class(a)
        x, w = min(zero, pct(a)), abs(pct(a) - zero)
        if cls != "zero":
            w = max(w, 0.5)  # a hair-thin bar still shows its direction
        # The zero line is drawn per row, across the bar band only, so it never cuts
        # through a label; stacked, the segments read as one axis.
        parts.append(
            f'<g class="row" data-feature="{_e(name)}">'
            f'<text class="label" x="0" y="{y + 16}">{_e(label)}</text>'
            f'<text class="amount {cls}" x="100%" y="{y + 16}" text-anchor="end">{_e(signed_dollars(a))}</text>'
            f'<rect class="bar {cls}" data-feature="{_e(name)}" x="{x:.2f}%" y="{y + bar_y}" '
            f'width="{w:.2f}%" height="{bar_h}" rx="2"/>'
            f'<line class="zero-line" x1="{zero:.2f}%" x2="{zero:.2f}%" y1="{y + bar_y - 5}" '
            f'y2="{y + bar_y + bar_h + 5}"/>'
            "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[tuple[str, str, float]], baseline: float) -> str:
    body = "".join(f"<tr><th scope='row'>{_e(label)}</th><td>{_e(signed_dollars(a))}</td></tr>" for _, label, a in rows)
    return (
        # A table ignores width:1px, so the hiding wrapper is a div.
        '<div class="visually-hidden"><table>'
        f"<caption>How each input moved the expected cost, compared with {_e(REFERENCE)} "
        f"({_e(dollars(baseline))})</caption>"
        "<thead><tr><th scope='col'>Input</th><th scope='col'>Effect on charges</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _cautions(values: Mapping[str, str], model: Artifact) -> str:
    """Name inputs outside what the model was trained on: valid, but extrapolated."""
    ranges = model.metadata.get("training_ranges")
    if not isinstance(ranges, Mapping):
        return ""
    notes: list[str] = []
    for spec in FIELDS:
        seen = ranges.get(spec.name)
        value = _number(str(values.get(spec.name, "")))
        if not isinstance(spec, NumberField) or not isinstance(seen, Mapping) or value is None:
            continue
        lo, hi = seen.get("min"), seen.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo <= value <= hi:
            notes.append(f"{spec.label} {_num(value)} (trained on {_num(lo)} to {_num(hi)})")
    if not notes:
        return ""
    return (
        '<p class="caution"><strong>Outside the training data:</strong> '
        f"{_e('; '.join(notes))}. Treat this estimate with extra caution.</p>"
    )


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


def _range_chart(result: FormResult) -> str:
    """Range, median and mean on one dollar axis (inline SVG, x in percent for any width).

    The mean is a dot above the band, the median a line through it, each labelled on its
    own side of the band so that close values never print over each other.
    """
    values = (result.low, result.high, result.median, result.charges)
    if not all(math.isfinite(v) for v in values):
        return ""
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

    x_low, x_high, x_med, x_mean = (pct(v) for v in (result.low, result.high, result.median, result.charges))
    share = share_of_patients(result.level)
    title = (
        f"{share} like this cost between {dollars(result.low)} and {dollars(result.high)}; "
        f"half cost less than {dollars(result.median)}; expected cost {dollars(result.charges)}."
    )
    band_y, band_h, axis_y = 26, 20, 78
    parts = [
        f'<svg class="range" id="range" role="img" aria-labelledby="range-title" width="100%" height="{axis_y + 26}">',
        f'<title id="range-title">{_e(title)}</title>',
        f'<rect class="band" x="{x_low:.2f}%" y="{band_y}" width="{max(x_high - x_low, 0.5):.2f}%" '
        f'height="{band_h}" rx="3" data-dollars="{result.low:.2f}" data-high="{result.high:.2f}"/>',
        f'<line class="median" x1="{x_med:.2f}%" x2="{x_med:.2f}%" y1="{band_y - 4}" y2="{band_y + band_h + 4}" '
        f'data-dollars="{result.median:.2f}"/>',
        f'<circle class="mean" cx="{x_mean:.2f}%" cy="{band_y + band_h / 2}" r="7" '
        f'data-dollars="{result.charges:.2f}"/>',
        f'<text class="mark-label mean-label" x="{x_mean:.2f}%" y="{band_y - 10}" text-anchor="{_anchor(x_mean)}">'
        f"Expected {_e(dollars(result.charges))}</text>",
        f'<text class="mark-label median-label" x="{x_med:.2f}%" y="{band_y + band_h + 20}" '
        f'text-anchor="{_anchor(x_med)}">Median {_e(dollars(result.median))}</text>',
        f'<line class="axis" x1="0%" x2="100%" y1="{axis_y}" y2="{axis_y}"/>',
    ]
    for i, tick in enumerate(ticks):
        x = pct(tick)
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        parts.append(
            f'<g class="tick" data-dollars="{tick:.2f}">'
            f'<line x1="{x:.2f}%" x2="{x:.2f}%" y1="{axis_y}" y2="{axis_y + 5}"/>'
            f'<text x="{x:.2f}%" y="{axis_y + 20}" text-anchor="{anchor}">{_e(dollars(tick))}</text></g>'
        )
    parts.append("</svg>")
    legend = (
        '<p class="note legend">'
        f'<span class="key band">{_e(share)} ({_e(_percent(result.level))} interval)</span> '
        '<span class="key median">Median: half cost less</span> '
        '<span class="key mean">Expected cost (average)</span></p>'
    )
    return "".join(parts) + legend


def _spread(result: FormResult) -> str:
    """The plain-words reading of the numbers: what to budget, the range, the median."""
    mean_note = "The expected cost is the average over patients like this"
    # Decided on the dollars shown, so the sentence never contradicts the figures beside it.
    if round(result.charges) > round(result.median):
        mean_note += ": it sits above what most of them cost, because a few cost far more."
    else:
        mean_note += "."
    return (
        f'<p class="interval" id="interval">{_e(share_of_patients(result.level))} like this cost between '
        f"{_money(result.low)} and {_money(result.high)}; half cost less than {_money(result.median)}.</p>"
        f'<p class="mean-note" id="mean-note">{_e(mean_note)}</p>'
    )


def _result(result: FormResult, values: Mapping[str, str], model: Artifact) -> str:
    rows = _items(result, values)
    return (
        '<section class="card result" id="result" aria-labelledby="result-title">'
        '<h2 id="result-title">Estimated charges</h2>'
        '<p class="expected" id="expected">Expected cost (what to budget): '
        f'<data class="charges" id="charges" value="{result.charges:.2f}">{_e(dollars(result.charges))}</data></p>'
        f"{_spread(result)}"
        f"{_range_chart(result)}"
        f"{_cautions(values, model)}"
        '<h3 id="explain-title">What moved the expected cost</h3>'
        f'<p class="baseline" id="baseline">Compared with {_e(REFERENCE)} '
        f"(expected cost {_money(result.baseline)}), each bar shows how much one input "
        "raises or lowers this patient's expected cost.</p>"
        '<p class="note"><span class="key positive">Raises</span> <span class="key negative">Lowers</span></p>'
        f"{_chart(rows)}{_table(rows, result.baseline)}"
        "</section>"
    )


def _about(model: Artifact) -> str:
    """What the model is and how well it did, so a number is never shown without context."""
    meta = model.metadata
    lines: list[str] = []
    what = meta.get("model_description") or meta.get("model")
    if what:
        lines.append(f"<p>Model: {_e(what)}.</p>")
    metrics = meta.get("metrics")
    holdout = metrics.get("holdout") if isinstance(metrics, Mapping) else None
    mae, r2, cover = (holdout.get(k) if isinstance(holdout, Mapping) else None for k in ("mae", "r2", "coverage"))
    if isinstance(mae, (int, float)) and isinstance(r2, (int, float)):
        text = f"On patients held out from training it was off by {dollars(mae)} on average (R² {r2:.2f})"
        if isinstance(cover, (int, float)):
            text += f"; the {_percent(model.level)} interval covered {cover:.0%} of them"
        lines.append(f"<p>{_e(text)}.</p>")
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
            lines.append(f"<p>Trained on {_e(', '.join(spans))}.</p>")
    if not lines:
        return ""
    return (
        '<aside class="card about" aria-labelledby="about-title">'
        f'<h2 id="about-title">About this model</h2>{"".join(lines)}</aside>'
    )


# -- the page -------------------------------------------------------------------------------


def _css() -> str:
    colours = ";".join(f"--{k.replace('_', '-')}:{v}" for k, v in PALETTE.items())
    return (
        f":root{{{colours};color-scheme:light}}"
        "*,*::before,*::after{box-sizing:border-box}"
        "html{-webkit-text-size-adjust:100%;text-size-adjust:100%}"
        "body{margin:0;background:var(--page);color:var(--ink);"
        "font:1rem/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}"
        ".wrap{max-width:68rem;margin:0 auto;padding:1rem}"
        "h1{font-size:1.625rem;line-height:1.2;margin:.5rem 0 .25rem}"
        "h2{font-size:1.25rem;line-height:1.3;margin:0 0 1rem}"
        "h3{font-size:1.0625rem;margin:1.25rem 0 .25rem}"
        ".lede{color:var(--muted);margin:0 0 1rem;max-width:42rem}"
        "a{color:var(--accent);text-underline-offset:.15em}"
        "a:hover{text-decoration-thickness:2px}"
        ":focus-visible{outline:3px solid var(--focus);outline-offset:2px}"
        ".layout{display:grid;gap:1rem;grid-template-columns:minmax(0,1fr);align-items:start}"
        ".card{background:var(--card);border:1px solid var(--line);border-radius:.75rem;padding:1rem 1.125rem}"
        ".card>:last-child{margin-bottom:0}"
        ".field{margin:0 0 1.25rem}"
        ".field label{display:block;font-weight:650;font-size:1.0625rem}"
        ".help{margin:0 0 .375rem;color:var(--muted);font-size:.9375rem}"
        "input,select{display:block;width:100%;min-height:3rem;padding:.5rem .75rem;font:inherit;"
        "font-size:1.0625rem;color:var(--ink);background:var(--card);border:2px solid var(--border);"
        "border-radius:.5rem}"
        "input:focus-visible,select:focus-visible{outline-offset:1px;border-color:var(--ink)}"
        "input::placeholder{color:var(--muted)}"
        ".has-error{border-left:4px solid var(--error);padding-left:.75rem}"
        ".has-error input,.has-error select{border-color:var(--error)}"
        ".error-message{color:var(--error);font-weight:650;margin:0 0 .375rem}"
        "button{display:block;width:100%;min-height:3rem;padding:.625rem 1.5rem;border:0;border-radius:.5rem;"
        "background:var(--accent);color:var(--on-accent);font:inherit;font-size:1.0625rem;font-weight:700;"
        "cursor:pointer}"
        "button:hover{background:var(--accent-dark)}"
        ".error-summary{background:var(--card);border:3px solid var(--error);border-radius:.75rem;"
        "padding:1rem 1.125rem;margin:0 0 1rem}"
        ".error-summary h2{color:var(--error);margin-bottom:.5rem}"
        ".error-summary ul{margin:0;padding-left:1.25rem}"
        ".error-summary li{margin:.5rem 0}"
        ".error-summary a{color:var(--error);font-weight:650}"
        ".result h2{margin-bottom:.25rem}"
        ".expected{font-size:1.0625rem;font-weight:650;margin:0 0 .5rem}"
        ".charges{display:block;font-size:2.5rem;font-weight:800;line-height:1.1;"
        "font-variant-numeric:tabular-nums}"
        ".interval{font-size:1.125rem;font-weight:600;margin:0 0 .25rem}"
        ".mean-note{margin:0 0 .25rem}"
        ".range{display:block;overflow:visible;margin:.75rem 0 0;font-size:.875rem}"
        ".range text{fill:var(--muted);font-variant-numeric:tabular-nums}"
        ".range .mark-label{font-weight:700;fill:var(--ink)}.range .mean-label{fill:var(--up)}"
        ".range .band{fill:var(--range-fill);stroke:var(--accent);stroke-width:1.5}"
        ".range .median{stroke:var(--ink);stroke-width:3}"
        ".range .mean{fill:var(--up);stroke:var(--card);stroke-width:2}"
        ".range .axis,.range .tick line{stroke:var(--muted);stroke-width:1}"
        ".legend{margin:.25rem 0 .5rem}"
        ".key.band::before{background:var(--range-fill);border:1.5px solid var(--accent)}"
        ".key.median::before{width:3px;height:1rem;vertical-align:-.2rem;background:var(--ink)}"
        ".key.mean::before{border-radius:50%;background:var(--up)}"
        ".baseline,.note{color:var(--muted);margin:.25rem 0}"
        ".note{font-size:.9375rem}"
        ".caution{background:var(--caution-bg);border-left:4px solid var(--up);padding:.5rem .75rem;margin:.75rem 0}"
        ".key,.money{white-space:nowrap}.key{margin-right:.75rem}"
        ".key::before{content:'';display:inline-block;width:.75rem;height:.75rem;border-radius:2px;"
        "margin-right:.3rem;vertical-align:-.05rem}"
        ".key.positive::before{background:var(--up)}.key.negative::before{background:var(--down)}"
        ".chart{display:block;overflow:visible;margin-top:.5rem;font-size:.9375rem}"
        ".chart text{fill:var(--ink);paint-order:stroke;stroke:var(--card);stroke-width:4px;stroke-linejoin:round}"
        ".chart .amount{font-weight:700;font-variant-numeric:tabular-nums}"
        ".chart .amount.positive{fill:var(--up)}.chart .amount.negative{fill:var(--down)}"
        ".chart .bar.positive{fill:var(--up)}.chart .bar.negative{fill:var(--down)}"
        ".chart .zero-line{stroke:var(--ink);stroke-width:1.5}"
        ".about p{color:var(--muted);margin:.5rem 0}"
        "footer{color:var(--muted);font-size:.9375rem;margin:1.5rem 0 1rem}"
        "footer p{margin:.25rem 0}"
        "footer a{display:inline-block;padding:.375rem 0}"
        ".visually-hidden{position:absolute!important;width:1px!important;height:1px!important;margin:-1px;"
        "padding:0;overflow:hidden;clip:rect(0 0 0 0);clip-path:inset(50%);white-space:nowrap;border:0}"
        "@media (min-width:52rem){"
        ".wrap{padding:1.5rem 2rem}"
        "h1{font-size:2rem}"
        ".card{padding:1.5rem}"
        ".layout{grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:1.5rem;"
        "grid-template-areas:'form about'}"
        ".with-result{grid-template-areas:'form result' 'form about';grid-template-rows:auto 1fr}"
        ".form{grid-area:form}.result{grid-area:result}.about{grid-area:about}"
        "button{width:auto}}"
        "@media (forced-colors:active){.chart .bar,.range .mean{fill:CanvasText}"
        ".range .band{fill:Canvas;stroke:CanvasText}.range .median{stroke:CanvasText}"
        ".key::before{border:1px solid CanvasText}}"
    )


def render_page(
    *, values: Mapping[str, str], errors: Mapping[str, str], result: FormResult | None, model: Artifact
) -> str:
    """The whole page: error summary, result (if any), form, model notes and footer."""
    prefix = "Error: " if errors else ""
    body = [
        '<div class="wrap">',
        '<header><h1 id="top">',
        _e(TITLE),
        "</h1>",
        '<p class="lede">Enter the patient\'s details for a forecast of their yearly medical charges, '
        f"the range {_e(share_of_patients(model.level))} like them fall in ({_e(_percent(model.level))} "
        "interval) and what drove the estimate.</p></header>",
        "<main>",
        _error_summary(errors),
        '<div class="layout with-result">' if result is not None else '<div class="layout">',
        _result(result, values, model) if result is not None else "",
        _form(values, errors),
        _about(model),
        "</div></main>",
        "<footer>",
        f'<p>Model version <span class="version">{_e(model.version)}</span> · '
        '<a href="/docs">API documentation</a> · <a href="/api/v1/model">Model details (JSON)</a></p>',
        "<p>This is an estimate from a model trained on simulated textbook data, not a bill or a quote.</p>",
        "</footer></div>",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{prefix}{_e(TITLE)} – chargecast</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_css()}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def render_message(text: str) -> str:
    """A bare page with one sentence, for a form request that gets no form (401, 503)."""
    return f'<!doctype html><html lang="en"><meta charset="utf-8"><title>chargecast</title><p>{_e(text)}</p></html>'


__all__ = [
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
