"""The per-layer table: one row per compute op of the compiled IR, with the target's costs.

The IR gives every row its op, shapes, dtype, sparsity, FLOPs and bytes (`kiln.ir.costs`). A
target that estimates per-layer costs (FPGA, ASIC: the `layers` list of its own report) adds
them to the row of the same name; rows of the estimate that match no op (a layer the target
split or renamed) are appended so nothing is lost.

Latency per layer is never measured here (the generated code runs as one program); it is
`estimated`, and `method` says how: the target's cycle model (FPGA), or the measured total
apportioned by a roofline cost (CPU and the reference interpreter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kiln.ir.analysis import compute_ops
from kiln.ir.costs import op_bytes, op_flops
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Weight
from kiln.ir.ops.fused import Fused
from kiln.ir.types import FixedType, QuantType, TensorType

ROOFLINE_FLOPS_PER_S = 1e10
"""The roofline model's compute rate (one core's order of magnitude); only ratios matter when
a measured total is apportioned."""
ROOFLINE_BYTES_PER_S = 1e10

TARGET_LAYER_KEYS = ("latency_cycles", "ii", "reuse_factor", "mults", "dsp", "bram", "uram",
                     "lut", "ff", "multipliers", "adders", "mult_ops", "add_ops", "area_um2",
                     "energy_pj", "weight_bits")
"""Per-layer fields a target's estimate may carry, copied into the matching row."""


def value_name(value: Value, fallback: str) -> str:
    return value.name or fallback


def layer_name(op: Op, index: int) -> str:
    """The model's name for the layer: the result name (`conv1`), the source scope, or the op;
    a fused group joins its ops' names (`conv1+relu1`)."""
    if op.region is not None:
        inner = [str(o.results[0].name) for o in op.region.ops if o.results
                 and o.results[0].name and o.name != "kiln.yield"]
        if inner:
            return "+".join(inner) if len(inner) <= 3 else f"{inner[0]}+…+{inner[-1]}"
    if op.results and op.results[-1].name:
        return str(op.results[-1].name)
    return op.loc.scope or f"{op.name.split('.')[-1]}_{index}"


def tensor_row(value: Value, fallback: str) -> dict[str, Any]:
    return {"name": value_name(value, fallback), "shape": list(value.type.shape),
            "dtype": str(value.type.dtype)}


def precision_of(t: TensorType) -> str | None:
    """A quantized or fixed-point type as text; None for plain floats and ints."""
    return str(t.dtype) if isinstance(t.dtype, (FixedType, QuantType)) else None


def weight_sparsity(op: Op, module: Module) -> float | None:
    """Fraction of zeros over the weights `op` (or its region) reads; None without weights."""
    total = zeros = 0
    inner = op.region.walk() if op.region is not None else ()
    for operand in [*op.operands, *(v for o in inner for v in o.operands)]:
        producer = operand.producer
        if producer is None or not isinstance(producer.kind, Weight):
            continue
        array = module.weights.get(producer.kind.name)
        if array is None:
            continue
        total += array.size
        zeros += int(np.count_nonzero(np.asarray(array) == 0))
    return round(zeros / total, 6) if total else None


def ir_rows(module: Module) -> list[dict[str, Any]]:
    """The IR part of every row: names, op(s), shapes, dtype, sparsity, FLOPs and bytes."""
    rows = []
    for index, op in enumerate(compute_ops(module.main)):
        ops = ([o.name for o in op.region.ops if o.name != "kiln.yield"]
               if op.isa(Fused) and op.region is not None else [op.name])
        first = op.results[0].type if op.results else None
        rows.append({
            "name": layer_name(op, index), "op": op.name, "ops": ops,
            "source": op.loc.describe() or None,
            "inputs": [tensor_row(v, f"in{i}") for i, v in enumerate(op.operands)
                       if not (v.producer is not None and isinstance(v.producer.kind, Weight))],
            "outputs": [tensor_row(v, f"out{i}") for i, v in enumerate(op.results)],
            "dtype": str(first.dtype) if first is not None else "none",
            "precision": precision_of(first) if first is not None else None,
            "sparsity": weight_sparsity(op, module),
            "flops": op_flops(op), "bytes": op_bytes(op),
        })
    return rows


def latency(value: float | None, source: str, method: str) -> dict[str, Any]:
    """The one shape of every latency in a report (see `kiln.report.schema`)."""
    return {"value": None if value is None else float(value), "unit": "us", "source": source,
            "method": method}


def roofline_us(row: Mapping[str, Any]) -> float:
    return 1e6 * max(row["flops"] / ROOFLINE_FLOPS_PER_S, row["bytes"] / ROOFLINE_BYTES_PER_S)


def add_roofline_latency(rows: list[dict[str, Any]], total: dict[str, Any]) -> None:
    """Each row's share of the measured total by roofline cost; plain roofline without one."""
    costs = [roofline_us(r) for r in rows]
    if total["source"] == "measured" and total["value"] is not None and sum(costs) > 0:
        scale = total["value"] / sum(costs)
        method = "measured total apportioned by roofline cost (max of FLOPs, bytes)"
        for row, cost in zip(rows, costs):
            row["latency"] = latency(cost * scale, "estimated", method)
        return
    method = (f"roofline: max(FLOPs / {ROOFLINE_FLOPS_PER_S:.0e}/s, "
              f"bytes / {ROOFLINE_BYTES_PER_S:.0e}/s)")
    for row, cost in zip(rows, costs):
        row["latency"] = latency(cost, "estimated", method)


def merge_target_layers(rows: list[dict[str, Any]], target_layers: list[Mapping[str, Any]],
                        clock_mhz: float | None) -> None:
    """Copy each target estimate row into the IR row of the same name (appending orphans),
    and set the latency from `latency_cycles` at `clock_mhz` where the estimate has one."""
    by_name = {row["name"]: row for row in rows}
    for estimate in target_layers:
        name = str(estimate.get("name"))
        row = by_name.get(name)
        if row is None:
            row = by_name[name] = orphan_row(name, estimate)
            rows.append(row)
        for key in TARGET_LAYER_KEYS:
            if key in estimate:
                row[key] = estimate[key]
        if estimate.get("precision") and row.get("precision") is None:
            row["precision"] = str(estimate["precision"])
        cycles = estimate.get("latency_cycles")
        if isinstance(cycles, (int, float)) and clock_mhz:
            row["latency"] = latency(cycles / clock_mhz, "estimated",
                                     f"kiln HLS cycle model at {clock_mhz:g} MHz")


def orphan_row(name: str, estimate: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "op": str(estimate.get("op", "?")), "ops": [], "source": None,
            "inputs": [], "outputs": [], "dtype": "unknown", "precision": None,
            "sparsity": None, "flops": 0, "bytes": 0}


def fill_missing_latency(rows: list[dict[str, Any]], why: str) -> None:
    """Rows without a latency: 0 for free ops (views: no work anywhere), else unavailable."""
    for row in rows:
        if row["flops"] == 0 and row["bytes"] == 0 and row["outputs"]:
            row.setdefault("latency", latency(0.0, "estimated", "free: a view, no work"))
        row.setdefault("latency", latency(None, "unavailable", why))


def apply_target_types(rows: list[dict[str, Any]], target_ir: Module) -> None:
    """Dtypes as the target computes them: the type of the value of the same name in the
    target's own IR (the FPGA's fixed-point module), where one exists."""
    types = {r.name: r.type for op in target_ir.main.ops for r in op.results if r.name}
    for row in rows:
        for tensor in row["outputs"]:
            if tensor["name"] in types:
                tensor["dtype"] = str(types[tensor["name"]].dtype)
        t = types.get(row["name"])
        if t is not None:
            row["dtype"] = str(t.dtype)
            row["precision"] = precision_of(t)
