"""Per-layer bar charts as plain hand-written SVG (no plotting library).

`bar_chart` draws one horizontal bar per layer, scaled to the largest value, with the layer's
name on the left and the value on the right; every string is escaped. The charts the report
shows are chosen by `report_charts` from the fields the per-layer rows have.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kiln.report.format import fmt_number

WIDTH = 540
LABEL_W = 130
VALUE_W = 80
ROW_H = 20
TOP = 28


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _bar(i: int, label: str, value: float, top: float, color: str, unit: str) -> str:
    y = TOP + i * ROW_H
    span = WIDTH - LABEL_W - VALUE_W - 10
    width = 0.0 if top <= 0 else max(span * value / top, 1.0 if value > 0 else 0.0)
    short = label if len(label) <= 18 else label[:17] + "…"
    return (f'<text x="{LABEL_W - 6}" y="{y + 14}" text-anchor="end" class="lbl">'
            f'<title>{_esc(label)}</title>{_esc(short)}</text>'
            f'<rect x="{LABEL_W}" y="{y + 3}" width="{width:.1f}" height="{ROW_H - 6}" '
            f'rx="2" fill="{color}"/>'
            f'<text x="{LABEL_W + width + 6:.1f}" y="{y + 14}" class="val">'
            f'{_esc(fmt_number(value))}{_esc(" " + unit if unit else "")}</text>')


def bar_chart(title: str, rows: Sequence[tuple[str, float]], *, unit: str = "",
              color: str = "#5c6bc0") -> str:
    """An SVG bar chart of `rows` (label, value ≥ 0); "" when there is nothing to draw."""
    if not rows:
        return ""
    top = max(v for _, v in rows)
    height = TOP + ROW_H * len(rows) + 8
    bars = "".join(_bar(i, label, value, top, color, unit)
                   for i, (label, value) in enumerate(rows))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'aria-label="{_esc(title)}">'
            f'<text x="0" y="16" class="ttl">{_esc(title)}</text>{bars}</svg>')


Getter = Callable[[Mapping[str, Any]], Any]

CHARTS: tuple[tuple[str, str, Getter, str], ...] = (
    ("Latency per layer", "us", lambda r: r["latency"]["value"], "#ef6c00"),
    ("FLOPs per layer", "", lambda r: r["flops"], "#5c6bc0"),
    ("DSP per layer", "", lambda r: r.get("dsp"), "#00897b"),
    ("LUT per layer", "", lambda r: r.get("lut"), "#43a047"),
    ("FF per layer", "", lambda r: r.get("ff"), "#7cb342"),
    ("BRAM per layer", "", lambda r: r.get("bram"), "#6d4c41"),
    ("Area per layer", "um2", lambda r: r.get("area_um2"), "#8e24aa"),
    ("Energy per layer", "pJ", lambda r: r.get("energy_pj"), "#d81b60"),
    ("SQNR per layer (higher is better)", "dB", lambda r: r.get("sqnr_db"), "#1e88e5"),
)
"""Title, unit, how a row gives its value, colour: a chart appears when some row has a
positive value for it."""


def report_charts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The SVG charts that the per-layer rows have data for, in `CHARTS` order."""
    charts = []
    for title, unit, get, color in CHARTS:
        values = [(str(r["name"]), get(r)) for r in rows]
        shown = [(n, float(v)) for n, v in values
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(v > 0 for _, v in shown):
            sources = sorted({r["latency"]["source"] for r in rows
                              if r["latency"]["value"] is not None})
            suffix = f" ({', '.join(sources)})" if title.startswith("Latency") else ""
            charts.append(bar_chart(title + suffix, [(n, max(v, 0.0)) for n, v in shown],
                                    unit=unit, color=color))
    return charts
