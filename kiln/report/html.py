"""`render_html`: the report as one self-contained HTML page (no script, no network).

Sections: summary cards, the graph (Graphviz SVG inlined, or a text list with a note when
`dot` is missing), per-layer charts (hand-written SVG), the per-layer table, numerics, the
pipeline's passes, environment, manifest and the target's own keys. Every string that comes
from the model or the report goes through `esc` (a node may be called `<script>`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kiln.report.charts_svg import report_charts
from kiln.report.format import fmt_bytes, fmt_count, fmt_latency, fmt_number, layer_columns
from kiln.report.graph_dot import render_svg, to_dot
from kiln.report.schema import SECTIONS
from kiln.report.style import CSS

LEGACY_KEYS = frozenset({"ops", "fused_groups", "op_counts", "parameters", "weight_bytes",
                         "compile_seconds", "max_rel_error_vs_source", "target_options"})


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def tag(source: str) -> str:
    return f'<span class="tag {esc(source)}">{esc(source)}</span>'


def card(key: str, value: str, note: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{value}</div>'
            f'<div class="n">{note}</div></div>')


def summary(report: Mapping[str, Any]) -> str:
    model, totals, numerics = report["model"], report["totals"], report["numerics"]
    lat = totals["latency"]
    cards = [
        card("latency", esc(fmt_latency(lat).rsplit(" (", 1)[0]),
             tag(lat["source"]) + " " + esc(lat["method"])),
        card("FLOPs", esc(fmt_count(totals["flops"])), f"{esc(fmt_bytes(totals['bytes']))} moved"),
        card("parameters", esc(fmt_count(model["parameters"])),
             esc(fmt_bytes(model["weight_bytes"]))),
        card("ops", esc(model["ops"]), f"{esc(model['fused_groups'])} fused groups"),
    ]
    if numerics["max_rel_error"] is not None:
        cards.append(card("max rel. error", esc(f"{numerics['max_rel_error']:.2e}"),
                          f"vs {esc(numerics['reference'])}"))
    for key, unit in (("dsp", ""), ("lut", ""), ("ff", ""), ("bram", ""), ("ii", "cycles"),
                      ("area_um2", "um2"), ("energy_pj", "pJ"), ("arena_bytes", "bytes")):
        if key in totals:
            cards.append(card(key.split("_")[0].upper() if len(key) <= 4 else key,
                              esc(fmt_number(totals[key])), esc(unit)))
    return '<section id="summary" class="cards">' + "".join(cards) + "</section>"


def graph_fallback(graph: Mapping[str, Any]) -> str:
    """The graph as a text list: one line per node with its inputs."""
    names = {n["id"]: n["label"] for n in graph["nodes"]}
    preds: dict[str, list[str]] = {}
    for a, b in graph["edges"]:
        preds.setdefault(b, []).append(str(names.get(a, a)))
    lines = [f"{n['label']} = {n['op']}({', '.join(preds.get(n['id'], []))})"
             + (f"   [fused {n['group']}]" if n.get("group") else "") for n in graph["nodes"]]
    return f'<pre class="graph-text">{esc(chr(10).join(lines))}</pre>'


def graph_part(graph: Mapping[str, Any], dot: str) -> str:
    svg, why = render_svg(to_dot(graph), dot)
    basis = "latency" if graph.get("cost_basis") == "latency" else "FLOPs"
    legend = (f"<p>Nodes are filled by their share of the {basis} (darker costs more); "
              "dashed boxes are fused groups (one kernel each).</p>")
    if svg is None:
        return legend + f'<p class="note">{esc(why)}</p>' + graph_fallback(graph)
    return legend + f'<div class="graph">{svg}</div>'


def layer_table(report: Mapping[str, Any]) -> str:
    columns = layer_columns(report)
    head = "".join(f'<th class="{"num" if c.numeric else ""}">{esc(c.title)}</th>'
                   for c in columns)
    body = []
    for row in report["per_layer"]:
        cells = "".join(f'<td class="{"num" if c.numeric else ""}">{esc(c.text(row))}</td>'
                        for c in columns[1:])
        where = f' title="{esc(row["source"])}"' if row.get("source") else ""
        body.append(f"<tr><td{where}>{esc(columns[0].text(row))}</td>{cells}</tr>")
    methods = sorted({f"{r['latency']['source']}: {r['latency']['method']}"
                      for r in report["per_layer"]})
    notes = "".join(f"<li>{esc(m)}</li>" for m in methods)
    return (f'<div class="scroll"><table id="layer-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            f"<p>Latency per layer:</p><ul>{notes}</ul>")


def simple_table(anchor: str, header: Iterable[str], rows: Iterable[Iterable[Any]],
                 numeric: Iterable[bool]) -> str:
    flags = list(numeric)
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}</th>'
                   for h, n in zip(header, flags))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if n else ""}">{esc(c)}</td>'
                                    for c, n in zip(row, flags)) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table id="{anchor}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def passes_part(report: Mapping[str, Any]) -> str:
    rows = [(p.get("index", i), p["step"], f"{p['seconds'] * 1e3:.3f}",
             p["ops_before"], p["ops_after"], "yes" if p["changed"] else "no",
             ", ".join(f"{k}={v}" for k, v in sorted(p["statistics"].items())))
            for i, p in enumerate(report["passes"], 1)]
    if not rows:
        return "<p>No pass records (the model was not compiled by <code>kiln.compile</code>)."
    return (f"<p>Pipeline <code>{esc(report['pipeline'])}</code></p>"
            + simple_table("pass-table", ("#", "pass", "time ms", "ops before", "ops after",
                                          "changed", "statistics"), rows,
                           (True, False, True, True, True, False, False)))


def definition_list(items: Mapping[str, Any]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(_plain(v))}</dd>"
                            for k, v in items.items()) + "</dl>"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def numerics_part(numerics: Mapping[str, Any]) -> str:
    items = {k: fmt_number(numerics[k]) if k.startswith("max") else numerics[k]
             for k in ("reference", "inputs", "max_abs_error", "max_rel_error")
             if k in numerics}
    if numerics.get("accuracy"):
        items.update({f"accuracy: {k}": fmt_number(v) for k, v in numerics["accuracy"].items()})
    sqnr = numerics.get("per_layer_sqnr_db") or {}
    items["per-layer SQNR"] = (", ".join(f"{k}: {'exact' if v is None else f'{v:.1f} dB'}"
                                         for k, v in sqnr.items())
                               or "float model (no quantized layers)")
    return definition_list(items)


def target_part(report: Mapping[str, Any]) -> str:
    own = {k: v for k, v in report.items() if k not in SECTIONS and k not in LEGACY_KEYS}
    options = report.get("target_options") or {}
    return (f"<p>Options</p>{definition_list(options)}" if options else "") + (
        "<details><summary>The target's own report</summary>"
        f"<pre>{esc(json.dumps(own, indent=1, sort_keys=True, default=str))}</pre></details>")


def render_html(report: Mapping[str, Any], *, dot: str = "dot") -> str:
    """The report as one HTML page (module docstring); `dot` names the Graphviz program."""
    model = report["model"]
    charts = report_charts(report["per_layer"])
    title = f"kiln report: {model['name']} on {report['target']}"
    parts = [
        summary(report),
        section("graph", "Graph", graph_part(report["graph"], dot)),
        section("charts", "Per-layer charts", f'<div class="charts">{"".join(charts)}</div>'),
        section("layers", "Per-layer table", layer_table(report)),
        section("numerics", "Numerics", numerics_part(report["numerics"])),
        section("passes", "Pipeline", passes_part(report)),
        section("environment", "Environment", definition_list(report["environment"])),
        section("manifest", "Manifest", definition_list(
            {k: v for k, v in report["manifest"].items() if k != "files"})
            + simple_table("manifest-files", ("file", "sha256"),
                           sorted(report["manifest"]["files"].items()), (False, False))),
        section("target", f"Target: {report['target']}", target_part(report)),
    ]
    sub = (f"target <b>{esc(report['target'])}</b> · pipeline "
           f"<code>{esc(report['pipeline'])}</code> · report schema v"
           f"{esc(report['schema_version'])} · kiln {esc(report['environment']['kiln'])}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p class=\"sub\">{sub}</p></header>"
            f"<main>{''.join(parts)}</main>"
            "<footer>Generated by kiln · one self-contained file</footer></body></html>\n")
