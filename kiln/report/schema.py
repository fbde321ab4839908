"""The report's schema: its version, its sections and a small validator.

One schema for every target. A report is a JSON object with these structured sections:

    schema_version   int (`SCHEMA_VERSION`)
    target, pipeline str: the target's name and the pipeline that ran (kept from schema 0)
    model            name, inputs/outputs (name, shape, dtype), parameters, weight_bytes,
                     ops, fused_groups, op_counts
    passes           one row per pass: step, seconds, changed, ops_before, ops_after,
                     statistics (empty when the model was not built by `kiln.compile`)
    per_layer        one row per compute op (a fused group is one row): name, op, ops, inputs,
                     outputs, dtype, precision, sparsity, flops, bytes, latency, plus the
                     target's own per-layer costs (`ii`, `dsp`, `bram`, `lut`, `ff`,
                     `area_um2`, `energy_pj`, ...) and `sqnr_db` where known
    totals           flops, bytes, parameters, weight_bytes, latency, and the target's totals
    numerics         max_abs_error / max_rel_error vs the source model on the example inputs,
                     per-layer SQNR for quantized / fixed-point IR, accuracy on an eval set
    environment      versions of kiln, python, numpy, torch, the compilers, and their flags
    manifest         sha256 of the IR text, of the weights and of every generated file
    graph            nodes, edges and fused groups of the compiled IR (for the picture)

Every latency is an object `{"value", "unit", "source", "method"}` whose `source` is
`"measured"` (timed on the target itself), `"estimated"` (a cost model; `method` names it) or
`"unavailable"`. Schema 0's flat keys stay at the top level so existing callers keep working:
`ops`, `fused_groups`, `op_counts`, `parameters`, `weight_bytes`, `compile_seconds`,
`max_rel_error_vs_source`, and every key of the target's own report (FPGA `latency_cycles`,
`ii`, `dsp`, `bram`, `lut`, `ff`, `layers`; ASIC `area_um2`, `energy_pj`; CPU `arena_bytes`,
`kernels`, `flags`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiln.errors import KilnError

SCHEMA_VERSION = 1

LATENCY_SOURCES = ("measured", "estimated", "unavailable")

SECTIONS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "target": str,
    "pipeline": str,
    "model": dict,
    "passes": list,
    "per_layer": list,
    "totals": dict,
    "numerics": dict,
    "environment": dict,
    "manifest": dict,
    "graph": dict,
}
"""Top-level key → JSON type; every report has all of them."""

_NUMBER = (int, float)
_OPT_NUMBER = (int, float, type(None))

FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "model": {"name": str, "inputs": list, "outputs": list, "parameters": int,
              "weight_bytes": int, "ops": int, "fused_groups": int, "op_counts": dict},
    "pass": {"step": str, "seconds": _NUMBER, "changed": bool, "ops_before": int,
             "ops_after": int, "statistics": dict},
    "layer": {"name": str, "op": str, "ops": list, "inputs": list, "outputs": list,
              "dtype": str, "precision": (str, type(None)), "sparsity": _OPT_NUMBER,
              "flops": int, "bytes": int, "latency": dict},
    "totals": {"flops": int, "bytes": int, "parameters": int, "weight_bytes": int,
               "latency": dict},
    "latency": {"value": _OPT_NUMBER, "unit": str, "source": str, "method": str},
    "numerics": {"reference": str, "max_abs_error": _OPT_NUMBER,
                 "max_rel_error": _OPT_NUMBER, "per_layer_sqnr_db": dict,
                 "accuracy": (dict, type(None))},
    "environment": {"kiln": str, "python": str, "numpy": str, "torch": (str, type(None)),
                    "platform": str, "compilers": dict, "flags": dict},
    "manifest": {"ir_sha256": str, "weights_sha256": str, "files": dict},
    "graph": {"nodes": list, "edges": list, "groups": list},
}
"""Required fields of each part → JSON type(s); extra fields are allowed everywhere."""


def _check(where: str, obj: Any, fields: Mapping[str, type | tuple[type, ...]],
           problems: list[str]) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where} is {type(obj).__name__}, expected an object")
        return
    for key, kind in fields.items():
        if key not in obj:
            problems.append(f"{where} lacks '{key}'")
        elif not _is(obj[key], kind):
            problems.append(f"{where}.{key} is {type(obj[key]).__name__} ({obj[key]!r:.40}), "
                            f"expected {_kind_name(kind)}")


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not a number
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_latency(where: str, latency: Any, problems: list[str]) -> None:
    _check(where, latency, FIELDS["latency"], problems)
    if isinstance(latency, dict) and latency.get("source") not in LATENCY_SOURCES:
        problems.append(f"{where}.source is {latency.get('source')!r}, expected one of "
                        f"{', '.join(LATENCY_SOURCES)}")


def problems_of(report: Any) -> list[str]:
    """Everything wrong with `report` against the schema (empty when it is valid)."""
    problems: list[str] = []
    _check("report", report, SECTIONS, problems)
    if problems:
        return problems
    if report["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version is {report['schema_version']}, this kiln reads "
                        f"{SCHEMA_VERSION}")
    for name in ("model", "totals", "numerics", "environment", "manifest", "graph"):
        _check(name, report[name], FIELDS[name], problems)
    for i, row in enumerate(report["passes"]):
        _check(f"passes[{i}]", row, FIELDS["pass"], problems)
    for i, row in enumerate(report["per_layer"]):
        _check(f"per_layer[{i}]", row, FIELDS["layer"], problems)
        if isinstance(row, dict) and "latency" in row:
            _check_latency(f"per_layer[{i}].latency", row["latency"], problems)
    if isinstance(report["totals"], dict) and "latency" in report["totals"]:
        _check_latency("totals.latency", report["totals"]["latency"], problems)
    return problems


def validate_report(report: Any) -> dict[str, Any]:
    """`report` itself when it follows the schema; a `KilnError` listing the problems if not."""
    problems = problems_of(report)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more"
                                           if len(problems) > 8 else "")
        raise KilnError(f"the report does not follow kiln's report schema "
                        f"v{SCHEMA_VERSION}: {shown}",
                        hint="rebuild it with this kiln (`art.report()` or `kiln report`)")
    assert isinstance(report, dict)
    return report
