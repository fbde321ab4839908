"""`render_text`: the report as a terminal summary (totals, then the per-layer table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiln.report.format import fmt_bytes, fmt_count, fmt_latency, fmt_number, layer_columns


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Aligned columns: text left, numbers right; a dashed rule under the header."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right))
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    model, totals, numerics = report["model"], report["totals"], report["numerics"]
    lines = [
        f"model {model['name']} → target {report['target']} (pipeline {report['pipeline']})",
        f"  ops {model['ops']}, fused groups {model['fused_groups']}, parameters "
        f"{fmt_count(model['parameters'])} ({fmt_bytes(model['weight_bytes'])})",
        f"  FLOPs {fmt_count(totals['flops'])}, bytes moved {fmt_bytes(totals['bytes'])}, "
        f"latency {fmt_latency(totals['latency'])}",
    ]
    extra = [f"{k} {fmt_number(totals[k])}" for k in ("ii", "dsp", "bram", "lut", "ff",
                                                       "area_um2", "energy_pj", "arena_bytes")
             if k in totals]
    if extra:
        lines.append("  " + ", ".join(extra))
    if numerics["max_rel_error"] is not None:
        lines.append(f"  error vs {numerics['reference']}: max abs "
                     f"{fmt_number(numerics['max_abs_error'])}, max rel "
                     f"{fmt_number(numerics['max_rel_error'])}")
    if numerics.get("accuracy"):
        acc = ", ".join(f"{k} {fmt_number(v)}" for k, v in numerics["accuracy"].items())
        lines.append(f"  accuracy: {acc}")
    return lines


def render_text(report: Mapping[str, Any]) -> str:
    """Totals and a per-layer table, for a terminal (plain text, no colours)."""
    columns = layer_columns(report)
    rows = [[col.text(row) for col in columns] for row in report["per_layer"]]
    body = table([c.title for c in columns], rows, [c.numeric for c in columns])
    passes = report["passes"]
    tail = []
    if passes:
        seconds = sum(p["seconds"] for p in passes)
        tail.append(f"pipeline: {len(passes)} passes in {seconds * 1e3:.1f} ms")
    return "\n".join([*summary_lines(report), "", body, *tail]) + "\n"
