"""Number formatting and the per-layer table's columns, shared by the text and HTML views."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]


def fmt_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def fmt_count(value: int | float) -> str:
    """1234567 → 1.23M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(value)


def fmt_bytes(value: int | float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{int(value)} B"


def fmt_latency(latency: Mapping[str, Any]) -> str:
    """`12.3 us (measured)`, `- (unavailable)`."""
    value = latency.get("value")
    shown = "-" if value is None else f"{fmt_number(float(value))} {latency.get('unit', 'us')}"
    return f"{shown} ({latency.get('source', '?')})"


def fmt_shapes(tensors: Any) -> str:
    return ", ".join("x".join(map(str, t["shape"])) or "scalar" for t in tensors or [])


@dataclass(frozen=True)
class Column:
    """One column of the per-layer table: its title, how a row shows in it, alignment."""

    title: str
    text: Callable[[Row], str]
    numeric: bool = False
    key: str | None = None
    """The row field it shows (columns appear only when some row has it)."""


def _field(key: str) -> Callable[[Row], str]:
    return lambda row: fmt_number(row.get(key))


def _sqnr(row: Row) -> str:
    if "sqnr_db" not in row:
        return "-"
    return "exact" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"


def _sparsity(row: Row) -> str:
    return "-" if row.get("sparsity") is None else f"{100 * row['sparsity']:.0f}%"


BASE_COLUMNS = (
    Column("layer", lambda r: str(r["name"])),
    Column("op", lambda r: "+".join(o.removeprefix("kiln.") for o in r["ops"]) or r["op"]),
    Column("output", lambda r: fmt_shapes(r["outputs"])),
    Column("dtype", lambda r: str(r.get("precision") or r["dtype"])),
    Column("sparsity", _sparsity, True),
    Column("FLOPs", lambda r: fmt_count(r["flops"]), True),
    Column("bytes", lambda r: fmt_count(r["bytes"]), True),
    Column("latency us", lambda r: fmt_number(r["latency"]["value"]), True),
    Column("lat. source", lambda r: str(r["latency"]["source"])),
)
TARGET_COLUMNS = (("cycles", "latency_cycles"), ("II", "ii"), ("DSP", "dsp"), ("BRAM", "bram"),
                  ("LUT", "lut"), ("FF", "ff"), ("area um2", "area_um2"),
                  ("energy pJ", "energy_pj"))
OPTIONAL_COLUMNS = (*(Column(title, _field(key), True, key) for title, key in TARGET_COLUMNS),
                    Column("SQNR dB", _sqnr, True, "sqnr_db"))


def layer_columns(report: Mapping[str, Any]) -> list[Column]:
    """The base columns plus each optional one that some row fills."""
    rows = report["per_layer"]
    extra = [c for c in OPTIONAL_COLUMNS if any(c.key in r for r in rows)]
    return [*BASE_COLUMNS, *extra]
