"""The ``netshrink compress --report DIR`` page: one self-contained HTML file.

:func:`write_report` writes ``DIR/index.html`` and ``DIR/report.json`` (the same
numbers, for scripts) atomically. The page needs nothing but itself: the CSS is
inline, the two charts are SVG drawn here, and there are no scripts, fonts, images
or links to other files, so it can be mailed, archived or opened offline.

Every text that comes from the model or the user (layer names, reasons, the command
line, extra labels) is escaped; numbers are shown with thousands separators and four
significant digits (``report.json`` keeps them exact).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_directory
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .api import Compression

__all__ = ["HTML_FILE", "JSON_FILE", "REPORT_FORMAT", "write_report"]

REPORT_FORMAT = "netshrink-report/1"
HTML_FILE = "index.html"
JSON_FILE = "report.json"

FIDELITY_KEYS = ("relative_error", "cosine", "top1_agreement", "samples")
ACCURACY_KEYS = ("before", "after", "samples")

# Chart geometry (SVG user units = CSS pixels at 1200 px) and colours.
CHART_WIDTH = 1024
ROW_HEIGHT = 28
BAR_HEIGHT = 16
NAME_SIZE = 13  # layer names, monospace
SMALL_SIZE = 12  # kinds and value labels
MONO_ADVANCE = 0.61  # width of a monospace character, in em
SANS_ADVANCE = 0.6  # a generous average for the sans-serif fonts a browser may pick
MAX_LABEL_SHARE = 0.48  # of the chart width, for the name and kind columns together
MONO = "'DejaVu Sans Mono', 'Liberation Mono', Menlo, Consolas, monospace"
SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', 'Liberation Sans', Arial, sans-serif"
INK, MUTED, GRID, STRIPE = "#1d232b", "#5b6573", "#d5d9df", "#f5f6f8"
TOTAL_COLOUR, KEPT_COLOUR, SAMPLED_COLOUR, ERROR_COLOUR = "#d3d8df", "#2f6fdb", "#7c4dcc", "#d9730d"

ERROR_MEANING = {
    "interpolative": "the bound ‖R₂₂‖₂·‖W‖₂ on the root-mean-square error of the consumers' "
                     "pre-activations, in their own units, on the calibration data",
    "lowrank": "the relative RMS error of the consumers' pre-activations on the calibration data "
               "(the cut keeps its units; each consumer is replaced by a low-rank product)",
}
GRAM_MEANING = "the relative RMS error of the consumers' pre-activations on the calibration data"


def write_report(
    folder: str | os.PathLike,
    compression: Compression,
    *,
    fidelity: Mapping,
    accuracy: Mapping | None,
    command: str,
    source: str,
    extra: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the report of ``compression`` to the folder ``folder`` and return its HTML path.

    Args:
        folder: the folder to create; it holds ``index.html`` (one self-contained page)
            and ``report.json`` (the same numbers). Written atomically: the folder
            appears complete or not at all.
        compression: what :func:`netshrink.compress` returned.
        fidelity: the compressed model against the original on held-out samples:
            ``{"relative_error", "cosine", "top1_agreement", "samples"}``
            (``top1_agreement`` a fraction in [0, 1]).
        accuracy: ``None`` or ``{"before", "after", "samples"}``, accuracies as fractions.
        command: the exact command line, shown verbatim.
        source: what was compressed (a zoo name, a path); the page's title.
        extra: more ``{label: value}`` rows (file sizes, an export's largest difference).
        overwrite: replace an existing ``folder`` (otherwise
            :class:`~netshrink.errors.OutputExistsError`, and the folder is left as it was).
    """
    fidelity = _checked("fidelity", fidelity, FIDELITY_KEYS)
    accuracy = None if accuracy is None else _checked("accuracy", accuracy, ACCURACY_KEYS)
    extra = {} if extra is None else dict(extra)
    if not isinstance(command, str) or not isinstance(source, str):
        raise InvalidInputError("command and source must be strings (the command line and the model's name)")
    page = render_html(compression, fidelity=fidelity, accuracy=accuracy, command=command,
                       source=source, extra=extra)
    numbers = report_data(compression, fidelity=fidelity, accuracy=accuracy, command=command,
                          source=source, extra=extra)
    text = json.dumps(numbers, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        (tmp / HTML_FILE).write_text(page, encoding="utf-8")
        (tmp / JSON_FILE).write_text(text, encoding="utf-8")
    return Path(folder) / HTML_FILE


def _checked(what: str, values: Mapping, keys: tuple[str, ...]) -> dict:
    if not isinstance(values, Mapping):
        raise InvalidInputError(
            f"{what} must be a mapping with the keys {', '.join(keys)}; got {type(values).__name__}"
        )
    missing = [key for key in keys if key not in values]
    if missing:
        raise InvalidInputError(f"{what} lacks {', '.join(missing)} (it needs {', '.join(keys)})")
    for key in keys:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"{what}[{key!r}] must be a number, got {value!r}")
    return {key: values[key] for key in keys} | {k: v for k, v in values.items() if k not in keys}


# ---------------------------------------------------------------------------- numbers


def report_data(compression: Compression, *, fidelity: dict, accuracy: dict | None, command: str,
                source: str, extra: dict) -> dict:
    """The numbers of the report as plain JSON values (non-finite floats become ``null``)."""
    return _plain({
        "format": REPORT_FORMAT,
        "source": source,
        "command": command,
        "method": compression.method,
        "options": compression.options,
        "params_before": compression.params_before,
        "params_after": compression.params_after,
        "ratio": compression.ratio,
        "fidelity": fidelity,
        "accuracy": accuracy,
        "layers": [
            {"name": layer.name, "kind": layer.kind, "kept": layer.kept, "total": layer.total,
             "error": layer.error, "sampled": layer.sampled, "producers": list(layer.producers),
             "consumers": list(layer.consumers), **({"details": layer.details} if layer.details else {})}
            for layer in compression.layers
        ],
        "skipped": [{"module": module, "reason": reason} for module, reason in _skipped(compression)],
        "config": compression.config,
        "extra": extra,
    })


def _plain(value):
    """``value`` as JSON: mappings, sequences, numbers, strings; anything else as its text."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    item = getattr(value, "item", None)  # a numpy or torch scalar
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return _plain(item())
    return str(value)


def _skipped(compression: Compression) -> list[tuple[str, str]]:
    """``(module, reason)`` of each :class:`netshrink.graph.Skipped` entry."""
    return [(str(getattr(entry, "module", entry)), str(getattr(entry, "reason", ""))) for entry in compression.skipped]


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(exponent: int) -> str:
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def number(value, digits: int = 4, *, unlike: float | None = None) -> str:
    """``value`` for reading: integers with thousands separators, floats with ``digits``
    significant digits (more when needed to tell it from ``unlike``, e.g. a cosine of
    0.99996 is not shown as 1), very small or large floats as ``1.234×10⁻⁵``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}".replace("-", "−")
    if not isinstance(value, float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    while unlike is not None and digits < 12 and value != unlike and float(f"{value:.{digits}g}") == unlike:
        digits += 1
    exponent = math.floor(math.log10(abs(float(f"{value:.{digits}g}"))))
    if exponent >= 15 or exponent < -4:
        mantissa = f"{value / 10 ** exponent:.{digits}g}"
        text = _power_of_ten(exponent) if mantissa == "1" else f"{mantissa}×{_power_of_ten(exponent)}"
    elif exponent >= digits:
        text = f"{round(value, digits - 1 - exponent):,.0f}"
    else:
        text = f"{value:.{digits}g}"
    return text.replace("-", "−") if text.startswith("-") else text


def percent(fraction: float, digits: int = 4) -> str:
    """A fraction as a percentage with ``digits`` significant digits (never rounded to 0% or 100%)."""
    if isinstance(fraction, float) and not math.isfinite(fraction):
        return number(fraction)
    scaled = 100 * fraction
    unlike = 100.0 if fraction != 1 and scaled > 50 else (0.0 if fraction != 0 else None)
    return number(float(scaled), digits, unlike=unlike) + "%"


def _option(value) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_option(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_option(item) for item in value) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    return str(value)


# ---------------------------------------------------------------------------- markup

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def esc(text) -> str:
    """``text`` escaped for HTML and XML text or attribute values (characters XML forbids dropped)."""
    return html.escape(_NOT_XML.sub("", str(text)), quote=True)


def _cell(text: str, cls: str | None = None, tag: str = "td") -> str:
    return f"<{tag}{f' class={cls!r}' if cls else ''}>{text}</{tag}>"


def render_html(compression: Compression, *, fidelity: dict, accuracy: dict | None, command: str,
                source: str, extra: dict) -> str:
    """The report page as one string (see :func:`write_report`)."""
    layers = compression.layers
    sections = [
        _summary(compression, fidelity, accuracy),
        _quality(fidelity, accuracy),
        _widths_section(compression),
        _errors_section(compression),
        _skipped_section(compression),
    ]
    if extra:
        rows = "".join(f"<tr>{_cell(esc(label), tag='th')}{_cell(esc(_extra_value(value)), 'num')}</tr>"
                       for label, value in extra.items())
        sections.append(f'<section id="extra"><h2>Other measurements</h2>'
                        f'<table class="narrow"><tbody>{rows}</tbody></table></section>')
    sections.append(f'<section id="command"><h2>Command</h2><pre><code>{esc(command)}</code></pre></section>')
    cuts = f"{len(layers)} cut{'s' if len(layers) != 1 else ''}"
    lede = (f"{esc(compression.method)} · {cuts} · {percent(compression.ratio)} of the parameters kept")
    try:
        from . import __version__ as version
    except ImportError:  # pragma: no cover - only when the package is half-imported
        version = "?"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>netshrink report: {esc(source)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<header><p class="eyebrow">netshrink compression report</p><h1>{esc(source)}</h1>'
        f'<p class="lede">{lede}</p></header>\n'
        + "\n".join(sections)
        + f'\n<footer>Written by netshrink {esc(version)}. <code>{JSON_FILE}</code> next to this page '
        "holds the same numbers, unrounded.</footer>\n</main>\n</body>\n</html>\n"
    )


def _extra_value(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    return _option(value)


def _summary(compression: Compression, fidelity: dict, accuracy: dict | None) -> str:
    layers = compression.layers
    kept, total = sum(layer.kept for layer in layers), sum(layer.total for layer in layers)
    before, after = compression.params_before, compression.params_after
    shrink = f"{number(before / after)}× fewer" if after else "none left"
    cards = [
        ("Parameters", f"{number(before)} → {number(after)}",
         f"{percent(compression.ratio)} kept, {shrink}"),
        ("Units in the cuts", f"{number(kept)} of {number(total)}",
         f"{percent(kept / total) if total else '—'} kept over {len(layers)} cut{'s' if len(layers) != 1 else ''}"),
    ]
    if accuracy is not None:
        cards.append(("Accuracy", f"{percent(accuracy['before'])} → {percent(accuracy['after'])}",
                      f"{_points(accuracy['after'] - accuracy['before'])} on {number(accuracy['samples'])} samples"))
    cards.append(("Top-1 agreement", percent(fidelity["top1_agreement"]),
                  f"on {number(fidelity['samples'])} held-out samples"))
    html_cards = "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div></div>'
        for label, value, sub in cards
    )
    options = "".join(f"<li><code>{esc(key)}={esc(_option(value))}</code></li>"
                      for key, value in compression.options.items())
    rows = [f"<tr><th>Method</th><td><code>{esc(compression.method)}</code></td></tr>",
            f'<tr><th>Options</th><td><ul class="chips">{options or "<li>none</li>"}</ul></td></tr>']
    if compression.config:
        config = "".join(f"<li><code>{esc(key)}={esc(_option(value))}</code></li>"
                         for key, value in compression.config.items())
        rows.append(f'<tr><th>Config changes</th><td><ul class="chips">{config}</ul></td></tr>')
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{html_cards}</div>'
            f'<table class="facts"><tbody>{"".join(rows)}</tbody></table></section>')


def _points(change: float) -> str:
    """An accuracy change in percentage points, signed."""
    text = number(float(100 * change), 3)
    return ("+" if change > 0 else "±" if change == 0 else "") + text + " pp"


def _quality(fidelity: dict, accuracy: dict | None) -> str:
    reference = '<td class="num ref">reference</td>'
    rows = []
    if accuracy is not None:
        rows.append(
            f"<tr><th>Accuracy</th>{_cell(percent(accuracy['before']), 'num')}"
            f"{_cell(percent(accuracy['after']), 'num')}"
            f"{_cell(_points(accuracy['after'] - accuracy['before']), 'num')}"
            f"{_cell(number(accuracy['samples']), 'num')}</tr>"
        )
    samples = _cell(number(fidelity["samples"]), "num")
    measures = (("Relative error of the outputs", number(fidelity["relative_error"])),
                ("Cosine similarity of the outputs", number(fidelity["cosine"], unlike=1.0)),
                ("Top-1 agreement with the original", percent(fidelity["top1_agreement"])))
    rows += [f"<tr><th>{label}</th>{reference}{_cell(value, 'num')}<td class='num'>—</td>{samples}</tr>"
             for label, value in measures]
    head = ("<tr><th>Measure</th><th class='num'>Original</th><th class='num'>Compressed</th>"
            "<th class='num'>Change</th><th class='num'>Samples</th></tr>")
    return (
        '<section id="quality"><h2>Fidelity and accuracy</h2>'
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Fidelity compares the compressed model\'s outputs with the original\'s on held-out '
        "samples, not on the calibration data; the original is the reference it is measured against.</p></section>"
    )


def _skipped_section(compression: Compression) -> str:
    skipped = _skipped(compression)
    if not skipped:
        body = '<p class="note">No layer was skipped: every layer whose outputs can be cut was considered.</p>'
    else:
        rows = "".join(f"<tr><td><code>{esc(module)}</code></td><td>{esc(reason)}</td></tr>"
                       for module, reason in skipped)
        body = (f"<p class=\"note\">Layers whose outputs were not cut, and why "
                f"({len(skipped)} layer{'s' if len(skipped) != 1 else ''}).</p>"
                f"<table><thead><tr><th>Layer</th><th>Reason</th></tr></thead><tbody>{rows}</tbody></table>")
    return f'<section id="skipped"><h2>Skipped layers</h2>{body}</section>'


# ---------------------------------------------------------------------------- charts


def _text_width(text: str, size: float, advance: float) -> float:
    return len(text) * size * advance


def _kind_label(layer) -> str:
    return layer.kind + (" · sampler" if layer.sampled else "")


def _shortened(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` characters in the middle, keeping both ends of a module
    path (the block index near the front, the layer near the end)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "…" + name[len(name) - (limit - 1 - head):]


class _Labels:
    """The name and kind columns shared by both charts, so their rows line up."""

    def __init__(self, layers):
        kinds = [_kind_label(layer) for layer in layers]
        self.kind_width = max((_text_width(kind, SMALL_SIZE, SANS_ADVANCE) for kind in kinds), default=0)
        room = MAX_LABEL_SHARE * CHART_WIDTH - self.kind_width - 36
        char = NAME_SIZE * MONO_ADVANCE
        longest = max((len(layer.name) for layer in layers), default=1)
        limit = max(8, int(room // char))
        self.names = [_shortened(layer.name, limit) for layer in layers]
        self.kinds = kinds
        self.width = 12 + min(longest, limit) * char + 20 + self.kind_width + 16

    def row(self, index: int, y: float) -> str:
        """The stripe, name and kind of row ``index`` whose centre line is ``y``."""
        stripe = (f'<rect x="0" y="{y - ROW_HEIGHT / 2:.1f}" width="{CHART_WIDTH}" height="{ROW_HEIGHT}" '
                  f'fill="{STRIPE}"/>' if index % 2 == 0 else "")
        return (
            f'{stripe}<text x="12" y="{y:.1f}" dy="0.35em" font-family="{MONO}" font-size="{NAME_SIZE}" '
            f'fill="{INK}">{esc(self.names[index])}</text>'
            f'<text x="{self.width - 16:.1f}" y="{y:.1f}" dy="0.35em" text-anchor="end" font-family="{SANS}" '
            f'font-size="{SMALL_SIZE}" fill="{MUTED}">{esc(self.kinds[index])}</text>'
        )


def _svg(height: float, label: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(label)}" '
            f'width="{CHART_WIDTH}" height="{height:.0f}" viewBox="0 0 {CHART_WIDTH} {height:.0f}">'
            f'<title>{esc(label)}</title>{"".join(body)}</svg>')


def _tooltip(layer) -> str:
    lines = [f"{layer.name} ({_kind_label(layer)}): kept {layer.kept:,} of {layer.total:,}",
             f"error {number(layer.error)}"]
    if layer.producers:
        lines.append("producers: " + ", ".join(layer.producers))
    if layer.consumers:
        lines.append("consumers: " + ", ".join(layer.consumers))
    return f"<title>{esc(chr(10).join(lines))}</title>"


def widths_chart(layers) -> str:
    """Per cut, a grey bar for its units and a coloured bar for the kept ones, to one scale per kind."""
    labels = _Labels(layers)
    values = [f"{layer.kept:,} / {layer.total:,}" for layer in layers]
    shares = [f" ({percent(layer.kept / layer.total)})" if layer.total else "" for layer in layers]
    value_width = max(_text_width(v + s, SMALL_SIZE, SANS_ADVANCE) for v, s in zip(values, shares)) + 16
    span = CHART_WIDTH - labels.width - value_width
    longest = {}
    for layer in layers:
        longest[layer.kind] = max(longest.get(layer.kind, 0), layer.total)
    top = 6
    body = []
    for index, layer in enumerate(layers):
        y = top + ROW_HEIGHT * index + ROW_HEIGHT / 2
        scale = span / longest[layer.kind] if longest[layer.kind] else 0
        total_length = max(layer.total * scale, 2)
        kept_length = max(layer.kept * scale, 2) if layer.kept else 0
        colour = SAMPLED_COLOUR if layer.sampled else KEPT_COLOUR
        bar_y = y - BAR_HEIGHT / 2
        body.append(
            f"<g>{_tooltip(layer)}{labels.row(index, y)}"
            f'<rect x="{labels.width:.1f}" y="{bar_y:.1f}" width="{total_length:.1f}" height="{BAR_HEIGHT}" '
            f'rx="2" fill="{TOTAL_COLOUR}"/>'
            + (f'<rect x="{labels.width:.1f}" y="{bar_y:.1f}" width="{kept_length:.1f}" height="{BAR_HEIGHT}" '
               f'rx="2" fill="{colour}"/>' if kept_length else "")
            + f'<text x="{labels.width + total_length + 8:.1f}" y="{y:.1f}" dy="0.35em" font-family="{SANS}" '
            f'font-size="{SMALL_SIZE}" fill="{INK}">{esc(values[index])}'
            f'<tspan fill="{MUTED}">{esc(shares[index])}</tspan></text></g>'
        )
    height = top * 2 + ROW_HEIGHT * len(layers)
    return _svg(height, "kept and total units per cut", body)


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def error_scale(errors: list[float]) -> tuple[bool, float, float, list[float]]:
    """``(log, low, high, ticks)`` of the error axis: log when the positive errors span
    more than two decades, from the decade below the least to the decade above the largest."""
    positive = [e for e in errors if math.isfinite(e) and e > 0]
    if positive and max(positive) / min(positive) > 100:
        low_exp = math.floor(math.log10(min(positive)))
        high_exp = math.ceil(math.log10(max(positive)))
        if high_exp == low_exp:
            high_exp += 1
        stride = max(1, math.ceil((high_exp - low_exp) / 10))
        ticks = [10.0 ** k for k in range(low_exp, high_exp + 1, stride)]
        return True, 10.0 ** low_exp, 10.0 ** high_exp, ticks
    largest = max(positive, default=0.0)
    if largest == 0:
        return False, 0.0, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0]
    step = _nice_step(largest)
    high = step * math.ceil(largest / step - 1e-9)
    ticks = [step * i for i in range(round(high / step) + 1)]
    return False, 0.0, high, ticks


def _tick_labels(ticks: list[float], log: bool) -> list[str]:
    """Plain numbers, or on a log axis reaching below 0.001 or above 10,000 every decade as 10ᵏ."""
    exponents = [round(math.log10(tick)) for tick in ticks] if log else []
    if exponents and (min(exponents) < -3 or max(exponents) > 4):
        return [_power_of_ten(exponent) for exponent in exponents]
    return [number(float(tick)) for tick in ticks]


def errors_chart(layers) -> tuple[str, bool]:
    """Per cut, a bar of its reconstruction error; also whether the axis is logarithmic."""
    labels = _Labels(layers)
    errors = [float(layer.error) for layer in layers]
    log, low, high, ticks = error_scale(errors)
    texts = [number(e) for e in errors]
    value_width = max(_text_width(t, SMALL_SIZE, SANS_ADVANCE) for t in texts) + 20
    left = labels.width
    span = CHART_WIDTH - left - max(value_width, 40)

    def position(value: float) -> float:
        if log:
            return left + span * (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
        return left + span * (value - low) / (high - low)

    top = 6
    rows_bottom = top + ROW_HEIGHT * len(layers)
    # Row stripes and labels first, then the gridlines, then the bars above them.
    rows, bars = [], []
    for index, error in enumerate(errors):
        y = top + ROW_HEIGHT * index + ROW_HEIGHT / 2
        rows.append(labels.row(index, y))
        end = left
        bar = ""
        if math.isfinite(error) and error > 0:
            end = max(position(min(error, high)), left + 2)
            bar = (f'<rect x="{left:.1f}" y="{y - BAR_HEIGHT / 2:.1f}" width="{end - left:.1f}" '
                   f'height="{BAR_HEIGHT}" rx="2" fill="{ERROR_COLOUR}"/>')
        bars.append(f"<g>{_tooltip(layers[index])}{bar}"
                    f'<text x="{end + 8:.1f}" y="{y:.1f}" dy="0.35em" font-family="{SANS}" '
                    f'font-size="{SMALL_SIZE}" fill="{INK}">{esc(texts[index])}</text></g>')
    grid = []
    for tick, text in zip(ticks, _tick_labels(ticks, log)):
        x = position(tick)
        grid.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{rows_bottom + 4}" stroke="{GRID}" '
                    f'stroke-width="1"/>'
                    f'<text x="{x:.1f}" y="{rows_bottom + 18}" text-anchor="middle" font-family="{SANS}" '
                    f'font-size="{SMALL_SIZE}" fill="{MUTED}">{esc(text)}</text>')
    axis = ("reconstruction error, log scale (each gridline ×10)" if log
            else "reconstruction error, linear scale")
    grid.append(f'<line x1="{left:.1f}" y1="{rows_bottom + 4}" x2="{left + span:.1f}" y2="{rows_bottom + 4}" '
                f'stroke="{MUTED}" stroke-width="1"/>'
                f'<text x="{left + span / 2:.1f}" y="{rows_bottom + 40}" text-anchor="middle" '
                f'font-family="{SANS}" font-size="{SMALL_SIZE + 1}" fill="{INK}">{esc(axis)}</text>')
    return _svg(rows_bottom + 52, axis, rows + grid + bars), log


def _widths_section(compression: Compression) -> str:
    layers = compression.layers
    if not layers:
        return '<section id="widths"><h2>Layer widths</h2><p class="note">No layer was cut.</p></section>'
    kinds = sorted({layer.kind for layer in layers})
    legend = [f'<span><i style="background:{TOTAL_COLOUR}"></i>units before</span>',
              f'<span><i style="background:{KEPT_COLOUR}"></i>kept</span>']
    if any(layer.sampled for layer in layers):
        legend.append(f'<span><i style="background:{SAMPLED_COLOUR}"></i>kept, read through a sampler '
                      "(the producer still computes every unit)</span>")
    scale = ("Bars are drawn to one scale: the longest bar is the widest layer" if len(kinds) == 1
             else "Bars are drawn to one scale per kind (" + ", ".join(kinds) + "): the longest bar of "
             "each kind is its widest layer")
    rows = "".join(
        f"<tr><td><code>{esc(layer.name)}</code></td><td>{esc(_kind_label(layer))}</td>"
        f"{_cell(number(layer.kept), 'num')}{_cell(number(layer.total), 'num')}"
        f"{_cell(percent(layer.kept / layer.total) if layer.total else '—', 'num')}"
        f"{_cell(number(layer.error), 'num')}"
        f"<td><code>{esc(', '.join(layer.producers))}</code> → "
        f"<code>{esc(', '.join(layer.consumers))}</code></td></tr>"
        for layer in layers
    )
    table = ("<details><summary>Per-layer table</summary><table><thead><tr><th>Layer</th><th>Kind</th>"
             "<th class='num'>Kept</th><th class='num'>Total</th><th class='num'>Kept %</th>"
             "<th class='num'>Error</th><th>Producers → consumers</th></tr></thead>"
             f"<tbody>{rows}</tbody></table></details>")
    return (
        '<section id="widths"><h2>Layer widths before and after</h2>'
        f'<p class="note">Units of each cut (a cut is a layer whose output units were removed) in execution order. '
        f"{esc(scale)}.</p>"
        f'<p class="legend">{"".join(legend)}</p>'
        f'<div class="chart">{widths_chart(layers)}</div>{table}</section>'
    )


def _errors_section(compression: Compression) -> str:
    layers = compression.layers
    if not layers:
        return ""
    from .methods import METHODS

    if compression.method in ERROR_MEANING:
        meaning = ERROR_MEANING[compression.method]
    elif compression.method in METHODS:
        meaning = GRAM_MEANING
    else:  # a Method object of the user's own
        meaning = "the method's own error measure"
    chart, log = errors_chart(layers)
    scale = (" The errors span more than two decades, so the axis is logarithmic." if log else "")
    return (
        '<section id="errors"><h2>Reconstruction error per layer</h2>'
        f'<p class="note">The error of <code>{esc(compression.method)}</code> at each cut is {esc(meaning)}.'
        f"{scale}</p>"
        f'<div class="chart">{chart}</div></section>'
    )


_CSS = """
:root { color-scheme: light; --ink: #1d232b; --muted: #5b6573; --line: #e3e6ea; --panel: #f5f6f8;
        --accent: #2f6fdb; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Liberation Sans",
             Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 28px 40px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; }
.eyebrow { margin: 0; font-size: 13px; letter-spacing: .08em; text-transform: uppercase; color: var(--muted); }
h1 { margin: 2px 0 4px; font-size: 30px; line-height: 1.2; overflow-wrap: anywhere; }
.lede { margin: 0; color: var(--muted); }
h2 { margin: 34px 0 10px; font-size: 20px; }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 14px; }
.card { flex: 1 1 0; background: var(--panel); border-radius: 8px; padding: 12px 16px; }
.card .label { font-size: 13px; letter-spacing: .04em; text-transform: uppercase; color: var(--muted); }
.card .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; white-space: nowrap; }
.card .sub { font-size: 14px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 15px; }
table.narrow { width: auto; min-width: 50%; }
th, td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { font-size: 13px; letter-spacing: .04em; text-transform: uppercase; color: var(--muted);
           border-bottom: 2px solid var(--line); }
tbody th { font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ref { color: var(--muted); font-style: italic; }
table.facts th { width: 170px; white-space: nowrap; }
ul.chips { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.chips li { background: var(--panel); border: 1px solid var(--line); border-radius: 4px; padding: 0 8px; }
.note { color: var(--muted); margin: 6px 0 10px; max-width: 80ch; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 6px 0 8px; font-size: 14px; }
.legend i { display: inline-block; width: 14px; height: 14px; border-radius: 2px; margin-right: 6px;
            vertical-align: -2px; }
.chart { overflow-x: auto; }
.chart svg { display: block; max-width: 100%; height: auto; }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--accent); }
details table { margin-top: 8px; font-size: 14px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px;
      margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line); font-size: 13px;
         color: var(--muted); }
"""
