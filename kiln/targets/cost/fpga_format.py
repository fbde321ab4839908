"""Plain-text tables of FPGA estimates (for `art.report()` printing and the benchmark)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

COLUMNS = ("name", "op", "reuse_factor", "latency_cycles", "ii", "mults", "dsp", "lut", "ff",
           "bram", "uram")
HEADERS = ("layer", "op", "RF", "latency", "II", "mults", "DSP", "LUT", "FF", "BRAM18K", "URAM")


def format_rows(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned first column, right-aligned numbers, one space-padded line per row."""
    text = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in text]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_table(report: Mapping[str, object]) -> str:
    """The per-layer table, a total row and the verdict line."""
    layers = report["layers"]
    assert isinstance(layers, list)
    rows = [[layer[c] for c in COLUMNS] for layer in layers]
    rows.append(["total", "", "", report["latency_cycles"], report["ii"],
                 sum(layer["mults"] for layer in layers), report["dsp"], report["lut"],
                 report["ff"], report["bram"], report["uram"]])
    verdict = "fits" if report["fits"] else "does NOT fit"
    tail = (f"{report['part']} @ {report['clock_mhz']} MHz, io={report['io']}: latency "
            f"{report['latency_ns']:.1f} ns, II {report['ii']} cycles; {verdict} "
            f"(utilisation % {report['utilization_pct']})")
    return format_rows(HEADERS, rows) + "\n" + tail
