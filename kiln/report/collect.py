"""`build_report`: gather every section of the unified report from a `CompiledModel`.

The sections and their fields are documented in `kiln.report.schema`. Schema 0's flat keys
(`ops`, `op_counts`, `max_rel_error_vs_source`, ...) and every key of the target's own report
stay at the top level, so existing callers (`art.report()["dsp"]`) keep working.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.ir.analysis import compute_ops
from kiln.ir.costs import type_bytes
from kiln.ir.interpret import to_numpy
from kiln.ir.ops.core import Weight
from kiln.ir.ops.fused import Fused
from kiln.report import environment as env
from kiln.report import layer_numerics as numerics
from kiln.report.graph_model import graph_of
from kiln.report.layers import (
    add_roofline_latency,
    apply_target_types,
    fill_missing_latency,
    ir_rows,
    latency,
    merge_target_layers,
    tensor_row,
)
from kiln.report.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from kiln.compiler.driver import CompiledModel

MEASURE_SECONDS = 0.05
"""Time budget for measuring the total latency (after one warm-up run)."""
MEASURE_RUNS = 20

TARGET_TOTALS = ("latency_cycles", "latency_ns", "ii", "dsp", "bram", "uram", "lut", "ff",
                 "utilization_pct", "fits", "area_um2", "energy_pj", "multipliers", "adders",
                 "arena_bytes", "kernels")
"""Target totals copied into `totals` (they also stay at the top level)."""


def model_section(art: CompiledModel) -> dict[str, Any]:
    func = art.ir.main
    weights = {op.kind.name: op.kind.type for op in art.ir.walk() if isinstance(op.kind, Weight)}
    return {
        "name": art.ir.name,
        "inputs": [tensor_row(v, f"input{i}") for i, v in enumerate(func.args)],
        "outputs": [tensor_row(v, f"output{i}") for i, v in enumerate(func.outputs)],
        "parameters": sum(t.numel for t in weights.values()),
        "weight_bytes": sum(type_bytes(t) for t in weights.values()),
        "ops": len(compute_ops(func)),
        "fused_groups": sum(1 for op in func.ops if op.isa(Fused)),
        "op_counts": art.ir.op_counts(),
    }


def passes_section(art: CompiledModel) -> list[dict[str, Any]]:
    return [{"index": i, "step": r.step, "seconds": round(r.seconds, 6), "changed": r.changed,
             "ops_before": r.ops_before, "ops_after": r.ops_after,
             "statistics": dict(r.statistics)} for i, r in enumerate(art.pass_records, 1)]


def measure_total(art: CompiledModel, inputs: Sequence[np.ndarray],
                  runtime: str) -> dict[str, Any]:
    """The median wall time of one call on the target, or why it is not measured."""
    if not inputs:
        return latency(None, "unavailable", "no example inputs to run")
    if "interpret" in runtime.lower() and "triton" in runtime.lower():
        return latency(None, "unavailable",
                       "Triton's interpreter on the CPU: its time says nothing of a GPU")
    art.artifact.run(*inputs)
    times: list[float] = []
    deadline = time.perf_counter() + MEASURE_SECONDS
    while len(times) < MEASURE_RUNS and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        art.artifact.run(*inputs)
        times.append(time.perf_counter() - start)
    method = f"median of {len(times)} calls on the example inputs ({runtime})"
    return latency(float(np.median(times)) * 1e6, "measured", method)


def hls_cycles(art: CompiledModel, own: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-layer cycles of an ASIC's HLS code from the FPGA estimator's cycle model (the same
    C++; only the cycle counts are used, not the FPGA resources)."""
    from kiln.targets.cost.fpga_estimate import estimate

    clock, reuse = own.get("clock_mhz"), own.get("reuse_factor", 1)
    if not isinstance(clock, (int, float)) or not isinstance(reuse, (int, dict)):
        return []
    layers = estimate(numerics.compared_module(art), clock_mhz=float(clock), io="parallel",
                      reuse_factor=reuse).report()["layers"]
    assert isinstance(layers, list)
    return [{"name": r["name"], "latency_cycles": r["latency_cycles"], "ii": r["ii"]}
            for r in layers]


def per_layer_section(art: CompiledModel, own: Mapping[str, Any],
                      total: dict[str, Any]) -> list[dict[str, Any]]:
    rows = ir_rows(art.ir)
    target_ir = numerics.compared_module(art)
    if target_ir is not art.ir:
        apply_target_types(rows, target_ir)
    target_layers = own.get("layers")
    if isinstance(target_layers, list):
        if "area_um2" in own:
            target_layers = [*target_layers, *hls_cycles(art, own)]
        clock = own.get("clock_mhz")
        merge_target_layers(rows, target_layers,
                            float(clock) if isinstance(clock, (int, float)) else None)
    elif total["source"] == "measured":
        add_roofline_latency(rows, total)
    fill_missing_latency(rows, "the target has no per-layer latency model")
    return rows


def total_latency(art: CompiledModel, own: Mapping[str, Any],
                  inputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """The target's estimate when it has one (FPGA cycles), else a measurement (CPU)."""
    if isinstance(own.get("latency_ns"), (int, float)):
        clock = own.get("clock_mhz")
        return latency(own["latency_ns"] / 1e3, "estimated",
                       f"kiln HLS cycle model at {float(clock or 0):g} MHz")
    if "area_um2" in own:
        return latency(None, "unavailable", "summed from the per-layer estimates")
    return measure_total(art, inputs, str(own.get("runtime", art.target)))


def summed_latency(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of the rows' estimated latencies (layers run one after the other)."""
    known = [r["latency"] for r in rows if r["latency"]["value"] is not None]
    if not known:
        return latency(None, "unavailable", "no per-layer latency estimate")
    methods = sorted({k["method"] for k in known if k["method"] != "free: a view, no work"})
    return latency(sum(k["value"] for k in known), "estimated",
                   "sum over layers of " + "; ".join(methods))


def totals_section(model: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   own: Mapping[str, Any], total: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "flops": sum(int(r["flops"]) for r in rows), "bytes": sum(int(r["bytes"]) for r in rows),
        "parameters": model["parameters"], "weight_bytes": model["weight_bytes"],
        "latency": total,
    }
    out.update({k: own[k] for k in TARGET_TOTALS if k in own and not isinstance(own[k], list)})
    return out


def numerics_section(art: CompiledModel, inputs: Sequence[np.ndarray],
                     got: Sequence[np.ndarray], eval_data: Any) -> dict[str, Any]:
    reference, want = numerics.source_outputs(art, inputs)
    abs_err, rel_err = numerics.output_errors(got, want) if want else (None, None)
    return {
        "reference": reference, "inputs": "the example inputs" if inputs else "none",
        "max_abs_error": abs_err, "max_rel_error": rel_err,
        "per_layer_sqnr_db": numerics.per_layer_sqnr(art, inputs),
        "accuracy": numerics.accuracy(art, eval_data) if eval_data is not None else None,
    }


def attach_sqnr(rows: Sequence[dict[str, Any]], sqnr: Mapping[str, float | None]) -> None:
    """Each row's SQNR: that of its name, else of its output (a fused group's last value)."""
    for row in rows:
        names = [row["name"], *(t["name"] for t in row["outputs"][-1:])]
        found = next((n for n in names if n in sqnr), None)
        if found is not None:
            row["sqnr_db"] = sqnr[found]


def add_costs_to_graph(graph: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Each node's share of the cost: its layer's latency (split by FLOPs inside a fused
    group) where latencies are known, else its share of the FLOPs."""
    by_layer = {r["name"]: r for r in rows}
    lat = {n: r["latency"]["value"] for n, r in by_layer.items()
           if r["latency"]["value"] is not None}
    members: dict[str, list[dict[str, Any]]] = {}
    for node in graph["nodes"]:
        if node["layer"] is not None:
            members.setdefault(node["layer"], []).append(node)
    use_latency = bool(lat) and sum(lat.values()) > 0
    for layer, nodes in members.items():
        flops = sum(n["flops"] for n in nodes)
        for node in nodes:
            part = node["flops"] / flops if flops else 1.0 / len(nodes)
            node["cost"] = (lat.get(layer, 0.0) * part) if use_latency else float(node["flops"])
    total = sum(n.get("cost", 0.0) for n in graph["nodes"])
    for node in graph["nodes"]:
        node["cost_share"] = round(node.get("cost", 0.0) / total, 6) if total else 0.0
    graph["cost_basis"] = "latency" if use_latency else "flops"


def legacy_keys(model: Mapping[str, Any], art: CompiledModel,
                numerics_part: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: model[k] for k in ("ops", "fused_groups", "op_counts", "parameters",
                                 "weight_bytes")}
    out["compile_seconds"] = round(art.compile_seconds, 4)
    if art.source_outputs is not None and numerics_part["max_rel_error"] is not None:
        out["max_rel_error_vs_source"] = numerics_part["max_rel_error"]
    return out


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether `value` is a small JSON value (arrays, tensors and data sets are not)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if depth > 2 or not isinstance(value, (list, tuple, dict)) or len(value) > 32:
        return False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return all(isinstance(k, (str, int)) and is_plain(v, depth + 1) for k, v in items)


def target_options(art: CompiledModel) -> dict[str, Any]:
    """The target's options that are plain JSON values (arrays and data sets are left out)."""
    return {k: v for k, v in sorted(art.target_options.items()) if is_plain(v)}


def build_report(art: CompiledModel, *, eval_data: Any = None) -> dict[str, Any]:
    """The unified report of `art` (schema: `kiln.report.schema`); `eval_data=(x, y)` adds
    accuracy on an evaluation set."""
    own = dict(art.artifact.report())
    inputs = [to_numpy(x) for x in art.example_inputs]
    got = art.artifact.run(*inputs) if inputs else []
    model = model_section(art)
    total = total_latency(art, own, inputs)
    rows = per_layer_section(art, own, total)
    if "area_um2" in own:
        total = summed_latency(rows)
    numerics_part = numerics_section(art, inputs, got, eval_data)
    attach_sqnr(rows, numerics_part["per_layer_sqnr_db"])
    graph = graph_of(art.ir)
    add_costs_to_graph(graph, rows)
    target_ir = numerics.compared_module(art)
    report: dict[str, Any] = {**legacy_keys(model, art, numerics_part), **own}
    report.update({
        "schema_version": SCHEMA_VERSION, "target": art.target, "pipeline": art.pipeline,
        "target_options": target_options(art), "model": model,
        "passes": passes_section(art), "per_layer": rows,
        "totals": totals_section(model, rows, own, total), "numerics": numerics_part,
        "environment": env.environment(own),
        "manifest": env.manifest(art.ir, art.files, target_ir), "graph": graph,
    })
    return report
